"""Portable model bundles: one registered model with its weights and its lineage in one file,
which another registry imports (`rodin models export MODEL FILE`, `rodin models import FILE`).

A bundle (format 1) is an uncompressed tar archive (weights do not compress) of regular files:

    manifest.json     the records below, and `records_sha256`: the sha256 of the rest of the
                      manifest as canonical JSON (sorted keys, no spaces)
    blobs/<sha256>    each blob, named by the sha256 of its bytes: the weights (`weights`), the
                      dataset version's cached point clouds (`dataset`, when included) and the
                      training job's plots (`output`)

The records: the exporting registry (its URL through `redact`), when, and the lineage back to
the data: `models` (the exported model first, then its ancestors, nearest first: ids, job,
dataset, parent, epoch, final, config, metrics with the OOD statistics of a final checkpoint,
sha256, size, code and torch versions), the `jobs` that made them (kind, status, params with
their configs) and their `datasets` (name@version, content sha256, source, shapes, points).

The point clouds travel by default when they are at most DATA_LIMIT_BYTES (64 MiB), so that on
the importing side `rodin reconstruct --model NEW` without inputs and `rodin evaluate` work;
`--data` / `--no-data` decide otherwise. An imported model without them still reconstructs
given inputs; the dataset row then records the exporter's URI, which the store refuses to read.

Reading trusts nothing: members must be `manifest.json` or `blobs/<sha256>` regular files (no
links, folders, absolute paths or `..`), every blob must hash to its name and match the record
that names it (weights: the model's sha256 and size), the records must hash to
`records_sha256` and link up (parents, jobs, datasets). These checks catch corruption,
truncation and edits; they are not a signature (whoever rewrites a manifest can rehash it).
Nothing is unpickled: weights are bytes here, loaded later by a worker with `weights_only=True`.

Importing writes the blobs first and the rows second, in one transaction: a dataset version (an
existing one with the same content sha256 is reused), a succeeded training job that never ran
(`params.imported_from` says where it came from, with the original lineage), the model (final,
no parent here: its ancestors live in the exporting registry) and its `model_imports` row. A
bundle whose weights are already registered here writes nothing and names that model.
"""

from orchestrator.bundles.export import Exported, export_bundle
from orchestrator.bundles.format import Bundle, BundleError, canonical, records_sha256
from orchestrator.bundles.importing import Imported, describe_import, import_bundle, import_record
from orchestrator.bundles.read import read_bundle

__all__ = [
    "Bundle",
    "BundleError",
    "Exported",
    "Imported",
    "canonical",
    "describe_import",
    "export_bundle",
    "import_bundle",
    "import_record",
    "read_bundle",
    "records_sha256",
]
