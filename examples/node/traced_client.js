#!/usr/bin/env node
// A Node.js client that carries its trace into TaskService: every call sends the
// W3C `traceparent` of a client span, so the server's spans (and its SQL statement
// spans) join this client's trace.
//
//   npm ci                                            # once, in examples/node
//   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 node traced_client.js [host:port]
//
// The client's own spans go to OTEL_EXPORTER_OTLP_ENDPOINT over OTLP/gRPC (none are
// exported without it; the trace context still travels). Start the server with
// tracing on (e.g. the same OTEL_EXPORTER_OTLP_ENDPOINT) to see the whole trace.
// The last line printed is `RESULT {...}`: the trace id and what was called.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { context, trace, SpanKind, SpanStatusCode } = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { BasicTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');

const REPO = path.resolve(__dirname, '..', '..');
const ADDRESS = process.argv[2] || process.env.TASKSERVICE_ADDRESS || 'localhost:50051';
const DEADLINE_MS = 10000;

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({
    'service.name': process.env.OTEL_SERVICE_NAME || 'node-example-client',
  }),
  // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_EXPORTER_OTLP_*).
  spanProcessors: process.env.OTEL_EXPORTER_OTLP_ENDPOINT
    ? [new BatchSpanProcessor(new OTLPTraceExporter())]
    : [],
});
const tracer = provider.getTracer('taskservice-node-example');
const propagator = new W3CTraceContextPropagator();
const metadataSetter = { set: (metadata, key, value) => metadata.set(key, value) };

function loadServices() {
  const definition = protoLoader.loadSync(
    ['taskmanager/v1/project_service.proto', 'taskmanager/v1/task_service.proto'],
    { includeDirs: [path.join(REPO, 'protos')], longs: String, enums: String },
  );
  const v1 = grpc.loadPackageDefinition(definition).taskmanager.v1;
  const credentials = grpc.credentials.createInsecure();
  return {
    ProjectService: new v1.ProjectService(ADDRESS, credentials),
    TaskService: new v1.TaskService(ADDRESS, credentials),
  };
}

// One unary call in a client span of its own, child of `parent`; the span's context
// travels in the call's metadata as `traceparent` (and `tracestate`).
function tracedCall(clients, service, method, request, parent) {
  const span = tracer.startSpan(
    `taskmanager.v1.${service}/${method}`,
    {
      kind: SpanKind.CLIENT,
      attributes: {
        'rpc.system': 'grpc',
        'rpc.service': `taskmanager.v1.${service}`,
        'rpc.method': method,
      },
    },
    parent,
  );
  const metadata = new grpc.Metadata();
  propagator.inject(trace.setSpan(parent, span), metadata, metadataSetter);
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    clients[service][method](request, metadata, { deadline }, (error, response) => {
      const code = error ? error.code : grpc.status.OK;
      span.setAttribute('rpc.grpc.status_code', code);
      if (error) span.setStatus({ code: SpanStatusCode.ERROR, message: error.details });
      span.end();
      resolve({ code, response });
    });
  });
}

async function main() {
  const clients = loadServices();
  // The caller's own work: everything below is one trace.
  const root = tracer.startSpan('node-example.work');
  const parent = trace.setSpan(context.active(), root);
  const project = await tracedCall(
    clients,
    'ProjectService',
    'CreateProject',
    {
      project: { name: `node-traced-${process.pid}-${Date.now()}` },
    },
    parent,
  );
  const task = await tracedCall(
    clients,
    'TaskService',
    'CreateTask',
    {
      task: { projectId: project.response.id, title: 'traced from Node' },
    },
    parent,
  );
  const found = await tracedCall(
    clients,
    'TaskService',
    'GetTask',
    { id: task.response.id },
    parent,
  );
  const missing = await tracedCall(
    clients,
    'TaskService',
    'GetTask',
    { id: '999999999999' },
    parent,
  );
  root.end();
  await provider.shutdown(); // exports the spans still queued
  Object.values(clients).forEach((client) => client.close());
  const traceId = root.spanContext().traceId;
  console.log(`trace ${traceId}: GetTask ${found.code}, missing GetTask ${missing.code}`);
  console.log(
    'RESULT ' +
      JSON.stringify({
        traceId,
        projectId: project.response.id,
        taskId: task.response.id,
        codes: [project.code, task.code, found.code, missing.code],
      }),
  );
}

main().catch((error) => {
  console.error(`error: ${error.details || error.message}`);
  process.exit(1);
});
