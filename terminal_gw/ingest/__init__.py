"""The fleet side: a shared MQTT subscription into PostgreSQL, every record once by its `id`.

Runs beside the broker (`terminal-gw ingest`), not on the device. `records` turns a message
into rows (pure), `store` writes batches (psycopg 3), `migrate` keeps the schema, `service`
ties them to the broker; the command is `terminal_gw.cli.ingest`.
"""
