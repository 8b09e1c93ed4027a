"""resv notifier: signed webhooks delivered from the PostgreSQL audit.

The audit is the outbox. A trigger on `events` (migration 0005) creates one
delivery row per (endpoint, event) in the archiver's transaction; the
archiver NOTIFYs after each committed batch; `resv notifier` LISTENs, polls,
and delivers. One module, one job:

  settings   NotifierSettings from the environment (RESV_WEBHOOK_*, RESV_NOTIFIER_*)
  events     the delivered event types and the body of a delivery
  addresses  which URLs and addresses an endpoint may have (SSRF rules)
  signing    secrets and Standard Webhooks signatures (the `standardwebhooks` package)
  schedule   when a failed attempt is tried again
  sender     one HTTP attempt: resolve, check, connect to the checked address
  worker     the delivery loop: endpoints owned one notifier at a time, attempts leased
  retention  finished deliveries deleted after RESV_WEBHOOK_RETENTION_DAYS
  manage     the endpoints and their delivery log: the only module the API uses
  run        `resv notifier`
"""
