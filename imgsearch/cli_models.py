"""``imgsearch models``: the known CLIP models and the model cache (:mod:`common.models.catalog`).

- ``imgsearch models [--json]``: each known model with its default weights, dimensions,
  relative cost and whether its weights are in the cache;
- ``imgsearch models fetch NAME [--pretrained TAG] [--from FILE|s3://URI]``: fill the cache
  from the Hugging Face hub (a connected machine), or from a file or an ``s3://`` object
  (an air-gapped cluster filled from a bucket).
"""

from __future__ import annotations

import json


def add_parsers(sub) -> None:
    m = sub.add_parser("models", help="known CLIP models, what is in the model cache; fetch one",
                       description="Lists the known CLIP models (dimensions, relative cost, default "
                       "weights) and whether their weights are in the model cache "
                       "(IMGSEARCH_MODEL_CACHE_DIR). `models fetch NAME` fills the cache once, from the "
                       "Hugging Face hub, or --from a checkpoint file or s3:// URI.")
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    f = msub.add_parser("fetch", help="put a model's weights in the model cache")
    f.add_argument("name", help="model name, e.g. ViT-B-32")
    f.add_argument("--pretrained", help="weights tag (default: the model's default weights)")
    f.add_argument("--from", dest="source", metavar="FILE|s3://URI",
                   help="copy this checkpoint into the cache instead of downloading it")


def cmd_models(args, settings) -> int:
    from common.models import catalog

    if getattr(args, "models_command", None) == "fetch":
        return _fetch(args, settings)
    cached = catalog.cached(settings.cache_dir)
    rows = [{"name": k.name, "pretrained": k.pretrained, "dim": k.dim, "relative_cost": k.cost,
             "cached": cached[k.name], "bundled": not k.repo, "default": k.name == catalog.DEFAULT_MODEL,
             "selected": k.name == settings.clip_model, "note": k.note} for k in catalog.KNOWN.values()]
    if args.json:
        print(json.dumps({"cache_dir": str(settings.cache_dir), "models": rows}, indent=2))
        return 0
    print(f"model cache: {settings.cache_dir}")
    print(f"{'':2}{'model':<28} {'weights':<20} {'dim':>4} {'cost':>5}  {'cache':<8} note")
    for r in rows:
        mark = "*" if r["selected"] else " "
        where = "bundled" if r["bundled"] else ("cached" if r["cached"] else "-")
        print(f"{mark} {r['name']:<28} {r['pretrained']:<20} {r['dim']:>4} {r['relative_cost']:>5g}  {where:<8} "
              f"{r['note']}")
    print("\n* = IMGSEARCH_CLIP_MODEL; cost = image-encoder compute relative to ViT-B-32. "
          "`imgsearch models fetch NAME` fills the cache.")
    return 0


def _fetch(args, settings) -> int:
    from pathlib import Path

    from common.errors import ConfigError
    from common.models import catalog

    known = catalog.KNOWN.get(args.name)
    if known is None:
        raise ConfigError(f"unknown model {args.name!r}; known: {', '.join(catalog.KNOWN)} "
                          "(any other open_clip model: set IMGSEARCH_CLIP_PRETRAINED to a checkpoint)")
    if not known.repo:
        print(f"{known.name} is bundled: nothing to fetch")
        return 0
    pretrained = args.pretrained or known.pretrained
    if pretrained != known.pretrained:
        raise ConfigError(f"{known.name}: this catalog knows the weights {known.pretrained!r}; for other weights "
                          "point IMGSEARCH_CLIP_PRETRAINED at a checkpoint file or s3:// URI")
    if args.source:
        source = args.source
        if source.startswith("s3://"):
            from common.models.clip import download_checkpoint

            path = download_checkpoint(source, settings)
            target = catalog.install(known.name, pretrained, path, settings.cache_dir)
            path.unlink()  # one copy in the cache, under the model's name
            print(f"{known.name} ({pretrained}) is in the model cache: {target}")
            return 0
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise ConfigError(f"checkpoint file not found: {source}")
        target = catalog.install(known.name, pretrained, path, settings.cache_dir)
    else:
        target = catalog.cached_path(settings.cache_dir, known.name, pretrained)
        if not target.is_file():
            try:
                target = catalog.download(known, target)
            except OSError as exc:
                raise ConfigError(f"cannot download {known.name} ({pretrained}) from the Hugging Face hub: {exc}. "
                                  "On an air-gapped machine use --from FILE or --from s3://bucket/key") from None
    print(f"{known.name} ({pretrained}) is in the model cache: {target}")
    return 0


COMMANDS = {"models": cmd_models}
