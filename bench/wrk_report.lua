-- Loaded by `wrk -s`: prints wrk's figures as one JSON line, prefixed
-- BENCH_WRK, for bench/scenarios/overhead.py to read. Latencies are in
-- microseconds.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_WRK {"requests": %d, "duration_us": %d, "p50_us": %.1f, ' ..
    '"p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.mean, latency.max, errors.connect,
    errors.read, errors.write, errors.status, errors.timeout))
end
