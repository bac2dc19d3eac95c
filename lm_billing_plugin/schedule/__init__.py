"""Background work: the database claim protocol, the ticker service that runs it, autostart,
and the notifications a scheduled run sends."""
