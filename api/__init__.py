"""resv HTTP API (Litestar over the engine). One module, one job:

  app           the factory `create_app(settings=..., engine=...)`: routes, middleware, lifespan
  serve         `resv serve`: checks, then uvicorn (workers, multiprocess metrics); `serve()`
  edge          the connection before any key: bounded request heads (431), read deadlines
  settings      ApiSettings from the environment (keys, TTL, rate limit, limits)
  auth          API keys and roles: the key check, the operator guard
  schemas       every request and response body (msgspec Structs with constraints)
  bodies        strict decoding of request bodies; JSON depth, a client gone mid-body
  middleware    the app's one middleware: key check, error answer, request metrics, log line
  errors        the one mapping from failures to responses
  decisions     engine decisions as responses (409 rejections) and their recording
  deadline      the per-request bound on waiting for Redis
  cache         the per-process availability cache
  metrics       Prometheus: request metrics, decision and cache counters, /metrics
  oplog         the operator log: one JSON line per request, encoded once, written in batches
  docs          the OpenAPI document and its page (/schema, assets vendored in static/)
  times         microseconds <-> ISO-8601 UTC
  services      what handlers use (engine, cache, deadline), owned by the app
  availability, reservations, waitlist, resources, health: the controllers
  ops           the archiver's audit routes (/ops/...)
  console/      the operator console (/console): pages, session sign-in, SVG pictures
  bench         in-app echo routes for the benchmark (RESV_BENCH_ECHO=1 only)
"""
