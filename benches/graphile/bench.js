// graphile-worker throughput on no-op tasks, for benches/graphile.sh (run there, not alone).
//
// node bench.js <connection string> <schema> <jobs> <concurrency> [localQueueSize]
//
// Queues <jobs> no-op jobs in one statement, starts one worker process (a `run()`), and times
// from the moment the worker is ready until the jobs table is empty. With a localQueueSize, the
// pool fetches that many jobs at once and completes them in batches (completeJobBatchDelay and
// failJobBatchDelay of 0: grouped into one statement per event-loop tick). Prints one line:
// `jobs/s <rate>`. With GRAPHILE_BENCH_DROP=1 the schema is dropped afterwards.
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { Pool } = require("pg");

async function main() {
  const [connectionString, schema, jobsArg, concurrencyArg, localQueueArg] =
    process.argv.slice(2);
  const jobs = Number(jobsArg);
  const concurrentJobs = Number(concurrencyArg);
  const localQueueSize = localQueueArg ? Number(localQueueArg) : 0;
  // A silent logger: the default one writes a line per job, which would be measured too.
  const logger = new Logger(() => () => {});
  const utils = await makeWorkerUtils({ connectionString, schema, logger });
  await utils.migrate();
  await utils.release();
  const pool = new Pool({ connectionString, max: concurrentJobs + 4 });
  pool.on("error", (e) => console.error(e));
  const q = (sql, args) => pool.query(sql, args);
  const ident = `"${schema.replace(/"/g, '""')}"`;
  await q(`DELETE FROM ${ident}._private_jobs`);
  await q(
    `SELECT ${ident}.add_job('noop', '{}'::json) FROM generate_series(1, $1::int)`,
    [jobs],
  );
  const worker = {
    connectionString,
    schema,
    concurrentJobs,
    maxPoolSize: concurrentJobs + 2,
    pollInterval: 2000,
  };
  if (localQueueSize > 0) {
    worker.localQueue = { size: localQueueSize };
    worker.completeJobBatchDelay = 0;
    worker.failJobBatchDelay = 0;
  }
  const runner = await run({
    preset: { worker },
    pgPool: pool,
    logger,
    noHandleSignals: true,
    taskList: { noop: async () => {} },
  });
  const start = process.hrtime.bigint();
  for (;;) {
    const { rows } = await q(
      `SELECT count(*)::int AS n FROM ${ident}._private_jobs`,
    );
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await runner.stop();
  if (process.env.GRAPHILE_BENCH_DROP === "1") {
    await q(`DROP SCHEMA IF EXISTS ${ident} CASCADE`);
  }
  await pool.end();
  console.log(`jobs/s ${(jobs / seconds).toFixed(0)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
