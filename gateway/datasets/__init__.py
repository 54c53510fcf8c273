"""Governed datasets, gateway side: tables, rules (registration, four-eyes approval bound to the content
digest, deletion), the admin API and the ``palisade datasets`` CLI. The pipeline itself runs in the trainer
(``trainer.datasets``), enqueued by task name; the gateway never imports it."""
