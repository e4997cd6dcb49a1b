#!/usr/bin/env node
// A Node.js client of TaskService. It loads the contract from protos/ at run
// time (no code generation): creates a project and a few tasks, pages
// through ListTasks, consumes StreamTasks and prints what it got.
//
//   npm ci                                   # once, in examples/node
//   node client.js [host:port]               # default localhost:50051
//
// protos/ is all it needs: the googleapis file the contract imports is vendored
// there (protos/google/api/), and google/protobuf/* ships with proto-loader.
// The channel loads the published service config (service_config.json beside the
// protos): reads and creates are retried on UNAVAILABLE and unary calls get a 30 s
// deadline. Creates are retried only because each carries a request_id (AIP-155: a
// repeated id gets the first answer). grpc-js ignores the config's waitForReady, so
// each call asks for it itself (callMetadata below): it waits while the server is
// unreachable (e.g. restarting) instead of failing at once.
// The last line printed is `RESULT {...}`: a JSON summary for scripts.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const SERVICE_CONFIG = path.join(PROTOS, 'taskmanager', 'v1', 'service_config.json');
const ADDRESS = process.argv[2] || process.env.TASKSERVICE_ADDRESS || 'localhost:50051';
const STREAM_DEADLINE_MS = 60000; // the service config sets no deadline for streams

function loadServices() {
  const definition = protoLoader.loadSync(
    ['taskmanager/v1/project_service.proto', 'taskmanager/v1/task_service.proto'],
    {
      includeDirs: [PROTOS],
      longs: String, // int64 ids arrive as decimal strings, as in JSON
      enums: String, // enum values by name, e.g. 'TASK_PRIORITY_HIGH'
      defaults: true,
      oneofs: true,
    },
  );
  const v1 = grpc.loadPackageDefinition(definition).taskmanager.v1;
  const credentials = grpc.credentials.createInsecure();
  const options = { 'grpc.service_config': fs.readFileSync(SERVICE_CONFIG, 'utf8') };
  return {
    projects: new v1.ProjectService(ADDRESS, credentials, options),
    tasks: new v1.TaskService(ADDRESS, credentials, options),
  };
}

// What every call sends: no headers, but wait for ready (see the top of this file).
function callMetadata() {
  return new grpc.Metadata({ waitForReady: true });
}

// A unary call as a promise; its deadline comes from the service config.
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// All batches of a server stream.
function stream(client, method, request) {
  return new Promise((resolve, reject) => {
    const batches = [];
    const call = client[method](request, callMetadata(), {
      deadline: new Date(Date.now() + STREAM_DEADLINE_MS),
    });
    call.on('data', (batch) => batches.push(batch));
    call.on('error', reject);
    call.on('end', () => resolve(batches));
  });
}

async function main() {
  const { projects, tasks } = loadServices();
  const suffix = `${process.pid}-${Date.now()}`;

  const project = await unary(projects, 'CreateProject', {
    project: { name: `node-example-${suffix}`, description: 'made by examples/node' },
    requestId: crypto.randomUUID(), // makes the retry policy safe (AIP-155)
  });
  console.log(`created project ${project.id} ${project.name}`);

  const created = [];
  const priorities = ['TASK_PRIORITY_LOW', 'TASK_PRIORITY_MEDIUM', 'TASK_PRIORITY_HIGH'];
  for (let i = 1; i <= 5; i += 1) {
    const task = await unary(tasks, 'CreateTask', {
      task: {
        projectId: project.id,
        title: `node task ${i}`,
        priority: priorities[i % priorities.length],
        tags: ['node-example'],
      },
      requestId: crypto.randomUUID(),
    });
    created.push(task.id);
    console.log(`created task ${task.id} "${task.title}" ${task.priority} ${task.status}`);
  }

  // ListTasks, two per page, oldest first, until next_page_token is empty.
  const listed = [];
  let pages = 0;
  let pageToken = '';
  do {
    const page = await unary(tasks, 'ListTasks', {
      projectId: project.id,
      pageSize: 2,
      pageToken,
      orderBy: 'create_time',
    });
    pages += 1;
    listed.push(...page.tasks.map((task) => task.id));
    console.log(`page ${pages}: ${page.tasks.map((task) => task.id).join(', ')}`);
    pageToken = page.nextPageToken;
  } while (pageToken);

  // StreamTasks in batches of two; each batch carries a resume token.
  const batches = await stream(tasks, 'StreamTasks', { projectId: project.id, batchSize: 2 });
  const streamed = [];
  batches.forEach((batch, index) => {
    streamed.push(...batch.tasks.map((task) => task.id));
    console.log(`batch ${index + 1}: ${batch.tasks.map((task) => task.id).join(', ')}`);
  });

  projects.close();
  tasks.close();
  console.log(
    'RESULT ' +
      JSON.stringify({
        projectId: project.id,
        created,
        listed,
        pages,
        streamed,
        batches: batches.length,
      }),
  );
}

main().catch((error) => {
  const code = error.code !== undefined ? ` (gRPC code ${error.code})` : '';
  console.error(`error${code}: ${error.details || error.message}`);
  process.exit(1);
});
