#!/usr/bin/env node
// Register a signature and a program version, deploy it, read its status and see the change arrive
// on WatchTargets: the dspy-registry gRPC API from Node.js with @grpc/grpc-js and @grpc/proto-loader.
//
//   DSPY_REGISTRY_TARGET=127.0.0.1:50051 \
//   DSPY_REGISTRY_TOKEN="$(cat .dspy-registry/admin.token)" node examples/node/register_and_deploy.js
//
// Exits non-zero when a step fails or the watch does not report the deployment in time.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const TARGET = process.env.DSPY_REGISTRY_TARGET || '127.0.0.1:50051';
const TOKEN = process.env.DSPY_REGISTRY_TOKEN;
const ENVIRONMENT = process.env.DSPY_REGISTRY_ENVIRONMENT || 'staging';
const CALL_TIMEOUT_MS = 10_000;
const WATCH_TIMEOUT_MS = 30_000;

// proto-loader reads the .proto files at run time: nothing to generate. keepCase keeps the
// snake_case field names of the .proto; enums arrive as their names, int64 (revisions) as strings.
const definition = protoLoader.loadSync(
  ['dspy_registry/v1/registry.proto', 'dspy_registry/v1/deployment.proto'],
  { includeDirs: [PROTOS], keepCase: true, enums: String, longs: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).dspy_registry.v1;

// Rich error details travel as a serialized google.rpc.Status in the `grpc-status-details-bin`
// trailer; grpc-js hands over the bytes, protobufjs decodes them (BadRequest, ErrorInfo, ...).
const errorTypes = new protobuf.Root().loadSync(
  [path.join(PROTOS, 'google/rpc/status.proto'), path.join(PROTOS, 'google/rpc/error_details.proto')],
  { keepCase: true },
);

function richStatus(err) {
  const [bytes] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!bytes) return null;
  const status = errorTypes.lookupType('google.rpc.Status').decode(bytes);
  const details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    try {
      const type = errorTypes.lookupType(typeName);
      return { type: typeName, ...type.toObject(type.decode(any.value)) };
    } catch (notKnown) {
      return { type: typeName }; // a detail type this client has no .proto for
    }
  });
  return { code: status.code, message: status.message, details };
}

// An interceptor adds the bearer token to every call, unary and streaming alike. (Call credentials
// cannot be combined with an insecure channel in grpc-js, hence metadata rather than credentials.)
function bearer(options, nextCall) {
  return new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${TOKEN}`);
      next(metadata, listener);
    },
  });
}

const clientOptions = { interceptors: [bearer] };
const registry = new v1.RegistryService(TARGET, grpc.credentials.createInsecure(), clientOptions);
const deployments = new v1.DeploymentService(TARGET, grpc.credentials.createInsecure(), clientOptions);

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// The JSON that dspy.Module.save("program.json") writes for one Predict module.
function dspyState(instructions) {
  return Buffer.from(
    JSON.stringify({
      predict: {
        signature: {
          instructions,
          fields: [
            { prefix: 'Text:', description: '${text}' },
            { prefix: 'Sentiment:', description: '${sentiment}' },
          ],
        },
        demos: [{ text: 'This product is amazing!', sentiment: 'positive' }],
        traces: [],
        train: [],
        lm: null,
      },
      metadata: { dependency_versions: { python: '3.11', dspy: '2.6.27' } },
    }),
  );
}

const SIGNATURE_SPEC = {
  description: 'Classify text sentiment with confidence scoring',
  instructions: 'Classify sentiment.',
  input_fields: [{ name: 'text', type: { kind: 'KIND_STRING' } }],
  output_fields: [
    { name: 'sentiment', type: { kind: 'KIND_ENUM', enum_values: ['positive', 'negative', 'neutral'] } },
    { name: 'confidence', type: { kind: 'KIND_FLOAT' } },
  ],
};

// Opens WatchTargets on the program in ENVIRONMENT. `ready` resolves with the revision of the first
// message (the snapshot: the watch is established, so a change made after it cannot be missed);
// `change` with the first message that shows the program serving `version`.
function watchFor(program, version) {
  const stream = deployments.WatchTargets({ selectors: [{ program, environment: ENVIRONMENT }] });
  const ready = {};
  const change = {};
  ready.promise = new Promise((resolve, reject) => Object.assign(ready, { resolve, reject }));
  change.promise = new Promise((resolve, reject) => Object.assign(change, { resolve, reject }));
  const fail = (err) => {
    clearTimeout(timer);
    ready.reject(err); // no-op once resolved
    change.reject(err);
  };
  const timer = setTimeout(() => {
    stream.cancel();
    fail(new Error(`no change for ${program}@${version} in ${ENVIRONMENT} within ${WATCH_TIMEOUT_MS} ms`));
  }, WATCH_TIMEOUT_MS);
  stream.on('data', (message) => {
    if (message.kind === 'snapshot') ready.resolve(message.revision);
    if (message.kind !== 'changes') return; // progress bookmarks say nothing changed
    const target = message.changes.targets.find((t) => t.stable && t.stable.version === version);
    if (target) {
      clearTimeout(timer);
      stream.cancel(); // ends the stream with CANCELLED, which is ours and not an error
      change.resolve({ revision: message.revision, target });
    }
  });
  stream.on('error', (err) => {
    if (err.code !== grpc.status.CANCELLED) fail(err);
  });
  change.promise.catch(() => {}); // awaited later; a failure before then must not crash the process
  return { ready: ready.promise, change: change.promise };
}

async function main() {
  if (!TOKEN) throw new Error('set DSPY_REGISTRY_TOKEN (the admin token is in .dspy-registry/admin.token)');
  const suffix = crypto.randomBytes(4).toString('hex'); // names unique per run, so reruns work
  const signature = `sentiment_node_${suffix}`;
  const program = `sentiment_classifier_node_${suffix}`;
  const version = '1.0.0';

  // 1. A deliberate bad request, to show the error details a client gets.
  try {
    await call(registry, 'RegisterSignature', { signature, version: 'one.two', spec: SIGNATURE_SPEC });
    throw new Error('an invalid version was accepted');
  } catch (err) {
    if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
    const status = richStatus(err);
    const badRequest = status && status.details.find((d) => d.type === 'google.rpc.BadRequest');
    if (!badRequest) throw new Error(`INVALID_ARGUMENT without a BadRequest detail: ${err.message}`);
    const info = status.details.find((d) => d.type === 'google.rpc.ErrorInfo');
    console.log(`rejected as expected: ${grpc.status[err.code]} (${info ? `${info.domain} ${info.reason}` : 'no ErrorInfo'})`);
    for (const v of badRequest.field_violations) console.log(`  field violation: ${v.field}: ${v.description}`);
  }

  // 2. The signature and a program version that implements it.
  const sig = await call(registry, 'RegisterSignature', { signature, version, spec: SIGNATURE_SPEC });
  console.log(`registered signature ${sig.signature_version.name}`);
  const registered = await call(registry, 'RegisterProgram', {
    spec: {
      program,
      version,
      signature: `signatures/${signature}/versions/${version}`,
      performance: { accuracy: 0.92, latency_p95_ms: 150 },
      labels: { team: 'ml_platform', client: 'node' },
    },
    artifact: dspyState('Classify text sentiment.'),
    request_id: `register-${program}-${version}`,
  });
  const pv = registered.program_version;
  console.log(`registered program ${pv.program}@${pv.version} ${pv.artifact.digest}`);

  // 3. Watch the target, then deploy.
  const watch = watchFor(program, version);
  console.log(`watching ${program} in ${ENVIRONMENT} from revision ${await watch.ready}`);
  const created = await call(deployments, 'CreateDeployment', {
    program,
    version,
    environment: ENVIRONMENT,
    strategy: { strategy: 'STRATEGY_REPLACE' },
    reason: 'examples/node',
    request_id: `deploy-${program}-${version}`,
  });
  console.log(`created ${created.deployment.name}: ${created.deployment.state}`);

  const { revision, target } = await watch.change;
  console.log(`watch change at revision ${revision}: ${target.name} stable ${target.stable.version} ${target.stable.digest}`);

  // 4. What the control plane says now.
  const status = await call(deployments, 'GetDeploymentStatus', { program, environment: ENVIRONMENT });
  const current = status.current_deployment;
  console.log(`status: ${current.name} ${current.state}, stable ${status.target.stable.version}, ${status.verdict}`);
  if (current.name !== created.deployment.name || current.state !== 'DEPLOYMENT_STATE_SUCCEEDED') {
    throw new Error(`expected ${created.deployment.name} to have succeeded, got ${current.name} ${current.state}`);
  }
}

main()
  .then(() => process.exit(0))
  .catch((err) => {
    const status = richStatus(err);
    console.error(`error: ${err.message}`);
    if (status) console.error(`details: ${JSON.stringify(status.details)}`);
    process.exit(1);
  });
