"""resv: a strongly consistent reservation engine, as one import package.

  resv.lua        the commits, one Redis Functions library: every rule lives there
  resv.engine     typed async Python over the functions (knows no shell)
  resv.api        the Litestar HTTP API
  resv.archiver   drains the decision streams into PostgreSQL; timeline, verify, restore
  resv.cli        the `resv` command, one module per subcommand (resv.commands)
  resv.embedded, resv.embedded_pg, resv.scratch
                  private servers for `resv demo`, the tests and the replay

Data flows one way: api -> engine -> Lua -> stream -> archiver -> PostgreSQL.
The parts import downwards only (tests/test_layering.py): the engine imports
no other part, the archiver not the API, and the API reads the audit through
resv.archiver.reads alone. What composes them lives here, above all parts.
"""
