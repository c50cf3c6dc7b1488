"""`grpcurl describe SYMBOL` for the shim: resolve a symbol through server reflection alone."""

from __future__ import annotations

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main(address: str, symbol: str) -> int:
    with grpc.insecure_channel(address) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        try:
            service = pool.FindServiceByName(symbol)
        except KeyError:
            message = pool.FindMessageTypeByName(symbol)
            print(f"{message.full_name} is a message:")
            for field in message.fields:
                print(f"  {field.name} = {field.number};")
            return 0
        print(f"{service.full_name} is a service:")
        for method in service.methods:
            request, response = method.input_type.full_name, method.output_type.full_name
            print(f"  rpc {method.name} ( {request} ) returns ( {response} );")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
