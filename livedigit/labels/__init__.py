"""Corrections from the page ("that was a 7"), kept in a database and exported for training.

- :mod:`livedigit.labels.store`: :class:`~livedigit.labels.store.LabelStore`, what the server calls to
  store a :class:`~livedigit.labels.store.Label`.
- :mod:`livedigit.labels.database`: where they are kept (SQLite or PostgreSQL), the schema, migrations.
- :mod:`livedigit.labels.export`: the rows as pen-digits JSONL, for ``python -m train --extra-pen``.
- :mod:`livedigit.labels.command`: ``livedigit labels export`` and ``livedigit labels stats``.

Nothing is imported here, so ``livedigit.labels.command`` loads without the database libraries.
"""
