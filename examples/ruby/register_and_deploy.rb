#!/usr/bin/env ruby
# frozen_string_literal: true

# Register a signature and a program version, deploy it, read its status and see the change arrive
# on WatchTargets: the dspy-registry gRPC API from Ruby with the grpc gem and the stubs that
# `make clients` generates into build/clients/ruby.
#
#   make clients
#   DSPY_REGISTRY_TARGET=127.0.0.1:50051 \
#   DSPY_REGISTRY_TOKEN="$(cat .dspy-registry/admin.token)" ruby examples/ruby/register_and_deploy.rb
#
# Exits non-zero when a step fails or the watch does not report the deployment in time.

require 'json'
require 'securerandom'
require 'grpc'
require 'google/protobuf/well_known_types' # Any#unpack
require 'google/rpc/error_details_pb' # BadRequest, ErrorInfo, ...: from googleapis-common-protos-types

# Where `make clients` writes the stubs; `ruby -I DIR` (searched first) can point elsewhere.
$LOAD_PATH.push(File.expand_path('../../build/clients/ruby', __dir__))
require 'dspy_registry/v1/registry_services_pb'
require 'dspy_registry/v1/deployment_services_pb'

V1 = DspyRegistry::V1
TARGET = ENV.fetch('DSPY_REGISTRY_TARGET', '127.0.0.1:50051')
TOKEN = ENV.fetch('DSPY_REGISTRY_TOKEN') { abort 'set DSPY_REGISTRY_TOKEN (the admin token is in .dspy-registry/admin.token)' }
ENVIRONMENT = ENV.fetch('DSPY_REGISTRY_ENVIRONMENT', 'staging')
CALL_TIMEOUT_S = 10
WATCH_TIMEOUT_S = 30

# Every call sends the bearer token and a deadline. (Per call rather than through a
# GRPC::ClientInterceptor: with `return_op: true`, as the watch below uses, grpc 1.51 sends the
# metadata before interceptors run, so a token added there would not be sent.)
AUTH = { 'authorization' => "Bearer #{TOKEN}" }.freeze
def call_options = { metadata: AUTH, deadline: Time.now + CALL_TIMEOUT_S }

# The google.rpc.Status a failed call carries in its `grpc-status-details-bin` trailer, with each
# detail unpacked into its message type when this client knows it.
def error_details(error)
  status = error.to_rpc_status or return []
  status.details.map do |any|
    type = Google::Protobuf::DescriptorPool.generated_pool.lookup(any.type_name)
    type ? any.unpack(type.msgclass) : any
  end
end

# The JSON that dspy.Module.save("program.json") writes for one Predict module.
def dspy_state(instructions)
  JSON.generate(
    predict: {
      signature: {
        instructions: instructions,
        fields: [{ prefix: 'Text:', description: '${text}' }, { prefix: 'Sentiment:', description: '${sentiment}' }]
      },
      demos: [{ text: 'This product is amazing!', sentiment: 'positive' }],
      traces: [], train: [], lm: nil
    },
    metadata: { dependency_versions: { python: '3.11', dspy: '2.6.27' } }
  )
end

SIGNATURE_SPEC = V1::SignatureSpec.new(
  description: 'Classify text sentiment with confidence scoring',
  instructions: 'Classify sentiment.',
  input_fields: [V1::SignatureField.new(name: 'text', type: V1::FieldType.new(kind: :KIND_STRING))],
  output_fields: [
    V1::SignatureField.new(
      name: 'sentiment', type: V1::FieldType.new(kind: :KIND_ENUM, enum_values: %w[positive negative neutral])
    ),
    V1::SignatureField.new(name: 'confidence', type: V1::FieldType.new(kind: :KIND_FLOAT))
  ]
)

def main
  registry = V1::RegistryService::Stub.new(TARGET, :this_channel_is_insecure)
  deployments = V1::DeploymentService::Stub.new(TARGET, :this_channel_is_insecure)
  suffix = SecureRandom.hex(4) # names unique per run, so reruns work
  signature = "sentiment_ruby_#{suffix}"
  program = "sentiment_classifier_ruby_#{suffix}"
  version = '1.0.0'

  # 1. A deliberate bad request, to show the error details a client gets.
  begin
    registry.register_signature(
      V1::RegisterSignatureRequest.new(signature: signature, version: 'one.two', spec: SIGNATURE_SPEC),
      **call_options
    )
    raise 'an invalid version was accepted'
  rescue GRPC::InvalidArgument => e
    details = error_details(e)
    bad_request = details.find { |d| d.is_a?(Google::Rpc::BadRequest) } or
      raise "INVALID_ARGUMENT without a BadRequest detail: #{e.message}"
    info = details.find { |d| d.is_a?(Google::Rpc::ErrorInfo) }
    puts "rejected as expected: INVALID_ARGUMENT (#{info ? "#{info.domain} #{info.reason}" : 'no ErrorInfo'})"
    bad_request.field_violations.each { |v| puts "  field violation: #{v.field}: #{v.description}" }
  end

  # 2. The signature and a program version that implements it.
  sig = registry.register_signature(
    V1::RegisterSignatureRequest.new(signature: signature, version: version, spec: SIGNATURE_SPEC),
    **call_options
  )
  puts "registered signature #{sig.signature_version.name}"
  registered = registry.register_program(
    V1::RegisterProgramRequest.new(
      spec: V1::ProgramVersionSpec.new(
        program: program, version: version, signature: "signatures/#{signature}/versions/#{version}",
        performance: { 'accuracy' => 0.92, 'latency_p95_ms' => 150.0 },
        labels: { 'team' => 'ml_platform', 'client' => 'ruby' }
      ),
      artifact: dspy_state('Classify text sentiment.'),
      request_id: "register-#{program}-#{version}"
    ),
    **call_options
  )
  pv = registered.program_version
  puts "registered program #{pv.program}@#{pv.version} #{pv.artifact.digest}"

  # 3. Watch the target, then deploy. The watch's own deadline bounds the wait for the change: the
  #    stream ends with DEADLINE_EXCEEDED when it has not come by then.
  messages = Queue.new
  watch = deployments.watch_targets(
    V1::WatchTargetsRequest.new(selectors: [V1::TargetSelector.new(program: program, environment: ENVIRONMENT)]),
    return_op: true, metadata: AUTH, deadline: Time.now + WATCH_TIMEOUT_S
  )
  Thread.new do
    watch.execute.each { |message| messages << message }
    messages << RuntimeError.new('the watch ended before the change arrived')
  rescue GRPC::Cancelled
    nil # ours, once the change arrived
  rescue GRPC::DeadlineExceeded
    messages << RuntimeError.new("no change for #{program}@#{version} in #{ENVIRONMENT} within #{WATCH_TIMEOUT_S} s")
  rescue StandardError => e
    messages << e
  end
  next_message = lambda do
    message = messages.pop
    raise message if message.is_a?(Exception)

    message
  end
  # The first message is the snapshot: the watch is established, a change after it cannot be missed.
  puts "watching #{program} in #{ENVIRONMENT} from revision #{next_message.call.revision}"

  created = deployments.create_deployment(
    V1::CreateDeploymentRequest.new(
      program: program, version: version, environment: ENVIRONMENT,
      strategy: V1::DeploymentStrategy.new(strategy: :STRATEGY_REPLACE),
      reason: 'examples/ruby', request_id: "deploy-#{program}-#{version}"
    ),
    **call_options
  )
  puts "created #{created.deployment.name}: #{created.deployment.state}"

  loop do
    message = next_message.call
    next unless message.kind == :changes # progress bookmarks say nothing changed

    target = message.changes.targets.find { |t| t.stable&.version == version } or next
    puts "watch change at revision #{message.revision}: #{target.name} stable #{target.stable.version} " \
         "#{target.stable.digest}"
    break
  end
  watch.cancel

  # 4. What the control plane says now.
  status = deployments.get_deployment_status(
    V1::GetDeploymentStatusRequest.new(program: program, environment: ENVIRONMENT), **call_options
  )
  current = status.current_deployment
  puts "status: #{current.name} #{current.state}, stable #{status.target.stable.version}, #{status.verdict}"
  return if current.name == created.deployment.name && current.state == :DEPLOYMENT_STATE_SUCCEEDED

  raise "expected #{created.deployment.name} to have succeeded, got #{current.name} #{current.state}"
end

begin
  main
rescue GRPC::BadStatus => e
  warn "error: #{e.class.name.split('::').last} #{e.details}"
  error_details(e).each { |d| warn "  detail: #{d.class.name}: #{d.to_json}" }
  exit 1
rescue StandardError => e
  warn "error: #{e.message}"
  exit 1
end
