"""ReStyle encoder training: configuration, images (``data``), ReStyle's file format
(``formats``), losses, set-up, the loop (``loop``), and what only it uses (``ranger``,
``sync_bn``)."""
