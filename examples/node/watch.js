#!/usr/bin/env node
// Follow TaskService's change feed (WatchTasks) with the resume loop, in Node.js.
//
//   npm ci                                   # once, in examples/node
//   node watch.js [host:port]                # default localhost:50051
//
// `follow` is the loop every consumer needs: keep a local copy of the watched tasks,
// remember the last cursor, and after any break call again from it (no gap, no
// duplicate); start over from a snapshot when the cursor has expired (OUT_OF_RANGE).
// The demo makes changes, "loses" the stream, makes more changes while disconnected,
// resumes, and checks the copy against ListTasks. The last line printed is
// `RESULT {...}`: a JSON summary for scripts. Protos are loaded as in client.js.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO = path.resolve(__dirname, '..', '..');
const PROTOS = path.join(REPO, 'protos');
const ADDRESS = process.argv[2] || process.env.TASKSERVICE_ADDRESS || 'localhost:50051';
const DEADLINE_MS = 10000;
// Breaks to resume from: server draining or down, this client too slow, a deadline.
const RESUMABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.DEADLINE_EXCEEDED,
]);

function loadServices() {
  const definition = protoLoader.loadSync(
    ['taskmanager/v1/project_service.proto', 'taskmanager/v1/task_service.proto'],
    { includeDirs: [PROTOS], longs: String, enums: String, defaults: true },
  );
  const v1 = grpc.loadPackageDefinition(definition).taskmanager.v1;
  const credentials = grpc.credentials.createInsecure();
  return {
    projects: new v1.ProjectService(ADDRESS, credentials),
    tasks: new v1.TaskService(ADDRESS, credentials),
  };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// A local copy of the watched tasks, and the cursor it is up to date with.
class Mirror {
  constructor() {
    this.tasks = new Map(); // id (a decimal string) -> task
    this.cursor = '';
    this.changes = 0; // events applied, bookmarks aside
  }

  apply(event) {
    if (event.type !== 'TASK_EVENT_TYPE_BOOKMARK') {
      this.changes += 1;
      if (event.noLongerMatches) this.tasks.delete(event.task.id);
      else this.tasks.set(event.task.id, event.task);
    }
    if (event.cursor) this.cursor = event.cursor; // snapshot events have none
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The resume loop: keep `mirror` equal to the watched set until done(mirror).
// Returns how many streams it took.
async function follow(tasks, mirror, filters, done) {
  let streams = 0;
  let delay = 100;
  for (;;) {
    if (!mirror.cursor) mirror.tasks.clear(); // a fresh start: the snapshot rebuilds it
    const call = tasks.WatchTasks({
      ...filters,
      startCursor: mirror.cursor,
      initialSnapshot: !mirror.cursor,
    });
    streams += 1;
    try {
      for await (const response of call) {
        delay = 100;
        response.events.forEach((event) => mirror.apply(event));
        if (done(mirror)) {
          call.cancel();
          return streams;
        }
      }
    } catch (error) {
      if (error.code === grpc.status.OUT_OF_RANGE) mirror.cursor = ''; // CURSOR_EXPIRED
      else if (!RESUMABLE.has(error.code)) throw error;
      console.log(`stream ended (code ${error.code}); resuming from the last cursor`);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

async function main() {
  const { projects, tasks } = loadServices();
  const project = await unary(projects, 'CreateProject', {
    project: { name: `node-watch-${process.pid}-${Date.now()}` },
  });
  const create = (title) => unary(tasks, 'CreateTask', { task: { projectId: project.id, title } });
  const retitle = (id, title) =>
    unary(tasks, 'UpdateTask', { task: { id, title }, updateMask: { paths: ['title'] } });

  const first = await create('first');
  const second = await create('second');
  const mirror = new Mirror();
  const filters = { projectId: project.id };

  // 1. The initial snapshot: both tasks, then a bookmark with the first cursor.
  let streams = await follow(tasks, mirror, filters, (m) => Boolean(m.cursor));
  const snapshot = mirror.changes;
  console.log(`snapshot: ${[...mirror.tasks.keys()].join(', ')}`);

  // 2. Live changes arrive in commit order, each with its cursor.
  const third = await create('third');
  await retitle(first.id, 'first, renamed');
  streams += await follow(tasks, mirror, filters, (m) => m.changes === snapshot + 2);
  console.log(`after two changes: ${[...mirror.tasks.keys()].join(', ')}`);

  // 3. The stream is gone (follow returned); changes made meanwhile are not lost:
  await unary(tasks, 'DeleteTask', { id: second.id });
  await retitle(third.id, 'third, renamed');
  streams += await follow(tasks, mirror, filters, (m) => m.changes === snapshot + 4);
  console.log(`resumed: ${[...mirror.tasks.keys()].join(', ')}`);

  const listed = await unary(tasks, 'ListTasks', { projectId: project.id });
  projects.close();
  tasks.close();
  const titles = (entries) =>
    Object.fromEntries(
      [...entries].sort((a, b) => Number(a[0]) - Number(b[0])).map(([id, t]) => [id, t.title]),
    );
  console.log(
    'RESULT ' +
      JSON.stringify({
        projectId: project.id,
        snapshot,
        changes: mirror.changes,
        streams,
        mirror: titles(mirror.tasks.entries()),
        listed: titles(listed.tasks.map((t) => [t.id, t])),
      }),
  );
}

main().catch((error) => {
  const code = error.code !== undefined ? ` (gRPC code ${error.code})` : '';
  console.error(`error${code}: ${error.details || error.message}`);
  process.exit(1);
});
