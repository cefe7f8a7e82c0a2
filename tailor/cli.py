"""The ``tailor`` command. Each sub-command composes the library's layers; errors a user can fix end in one
line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

log = logging.getLogger("tailor")


def _splits(args: argparse.Namespace) -> int:
    from tailor.data.catalog import read_catalog
    from tailor.data.splits import make_splits, write_splits

    catalog = read_catalog(args.styles_csv)
    splits = make_splits(catalog, top=args.top, image_root=args.images)
    paths = write_splits(splits, catalog, args.out_dir)
    print(f"{catalog.source}: {len(catalog)} usable rows, {len(catalog.problems)} left out"
          + "".join(f"\n  {p}" for p in catalog.problems[:10]))
    if args.images:
        print(f"kept the rows whose image is in {args.images}")
    print(f"\n{'split':<16}{'rows':>8}{'classes':>9}{'untrained classes':>19}{'their rows':>12}")
    for name, rows, classes, untrained, untrained_rows in splits.summary_rows():
        share = f" ({untrained_rows / rows:.1%})" if untrained_rows and rows else ""
        print(f"{name:<16}{rows:>8}{classes:>9}{untrained:>19}{untrained_rows:>12}{share}")
    print(f"\n{len(splits.classes)} classes in classes.txt; top {splits.top}: {', '.join(splits.top_classes)}")
    print(f"wrote {', '.join(p.name for p in paths.values())} to {args.out_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from tailor import config, configurables, experiment
    from tailor.api.fitting import table_bindings

    data = table_bindings("", args.train, args.images) + table_bindings("evaluate/", args.test, args.images)
    if args.test:
        data.append("evaluate.group = 'all'")  # a table or tree of one's own has no top_classes.txt beside it
    configurables.parse(args.config, data + list(args.parameter))  # -p bindings win
    import gin
    gin.parse_config([f"main.default_name = '{config.config_name(args.config)}'"])
    # --fresh is an argument, not a binding: it must not make the saved config differ from a later rerun's.
    results = experiment.main(fresh=args.fresh)
    _print_results(results)
    failed = results.get("failed_steps")
    for step, error in (failed or {}).items():
        print(f"tailor: {step} failed ({error}); every result before it is in {results['run_dir']}", file=sys.stderr)
    return 1 if failed else 0


def _print_results(results: dict) -> None:
    if results.get("secondary_rank"):  # a DDP rank other than 0 has nothing to print
        return
    run_dir = Path(results["run_dir"])
    print(f"\nrun folder: {run_dir}")
    if "top1" in results:
        line = f"top-1 {results['top1']:.4f}   top-5 {results['top5']:.4f}   on {results['num_test']} test images"
        if results.get("num_name_only_rows"):
            line += (f"\n({results['num_name_only_rows']} of classes known by name only: top-1 "
                     f"{results['name_only_top1']:.4f}, top-5 {results['name_only_top5']:.4f})")
        unknown = results.get("num_unknown_class_rows", results.get("num_unseen_class_rows"))
        if unknown:
            line += f"\n({unknown} of classes never trained on, counted as errors"
        if results.get("num_unseen_class_rows"):
            line += ("; " if unknown else "\n(") + (f"classes with training images: top-1 {results['seen_top1']:.4f}, "
                                                  f"top-5 {results['seen_top5']:.4f})")
        print(line)
    if "fewshot" in results:
        from tailor.recipes.fewshot import fewshot_table
        print(fewshot_table(results))
    if "attribute_results" in results:
        from tailor.recipes.attributes import attributes_table
        print(attributes_table(results))
        print(f"per-attribute tables, confusion matrices and mistakes: {run_dir / 'heads'}/<attribute>/")
    table = run_dir / "per_class.md"
    if "top1" in results and table.is_file():
        print()
        print(table.read_text())


def _runtime(args: argparse.Namespace):
    """Where this command computes: ``--device`` (default ``auto``) and, for ``predict``, ``--devices``
    processes (or the ones torchrun/srun started), as the :class:`~tailor.distributed.Runtime` it passes down."""
    from tailor import distributed

    return distributed.start(args.device, devices=getattr(args, "devices", None))


def _predict(args: argparse.Namespace) -> int:
    from tailor.data.decoding import ImageError
    from tailor.predictions import AttributePrediction, expand_images, write_predictions_csv

    paths = expand_images(args.images)  # before any model is read: a wrong path is a quick error
    if not paths:
        raise FileNotFoundError(f"no images in {' '.join(args.images)}")
    many = len(paths) > 1 and any(Path(p).is_dir() for p in args.images) or args.csv
    if _exported_in_one_process(args):  # ONNX Runtime alone: torch is never imported
        from tailor import config
        from tailor.deploy.onnx_predict import ExportedPredictor

        if args.parameter:
            config.parse([], args.parameter)  # onnx.* are the bindings this path knows
        items = ExportedPredictor(args.run, args.device, config.session_threads()).predict_files(
            paths, k=args.k, progress=bool(many))
    else:
        from tailor.config import session_threads
        from tailor.inference import load_predictor

        _bindings(args)
        ranks = _runtime(args)
        predictor = load_predictor(args.run, runtime=ranks, onnx_threads=session_threads())
        items = predictor.predict_files(paths, k=args.k, progress=bool(many))
        if not ranks.is_zero:  # the other ranks compute their share of each pass; rank 0 prints and writes
            for _ in items:
                pass
            return 0
    predictions, failed = [], 0
    for item in items:
        if isinstance(item, ImageError):
            failed += 1
            print(f"skipped {item}", file=sys.stderr)
            continue
        predictions.append(item)
        if not many:
            print(item.path)
            if isinstance(item, AttributePrediction):
                _print_attributes(item)
            else:
                for label, score in zip(item.labels, item.scores):
                    print(f"  {score:6.1%}  {label}")
    if many:
        out = Path(args.csv or "predictions.csv")
        write_predictions_csv(predictions, out)
        print(f"wrote {len(predictions)} predictions to {out}" + (f" ({failed} unreadable images skipped)" if failed else ""))
    return 0 if predictions else 1


def _exported_in_one_process(args: argparse.Namespace) -> bool:
    """Whether ``predict`` runs an exported file in this one process (not split across processes by
    ``--devices`` or a launcher such as torchrun or srun)."""
    launched = any(int(os.environ.get(name, "1") or 1) > 1 for name in ("WORLD_SIZE", "SLURM_NTASKS"))
    return Path(args.run).suffix.lower() == ".onnx" and (args.devices or 1) <= 1 and not launched


def _print_attributes(item) -> None:
    """One line per attribute: the best value and its probability, then the runners-up."""
    width = max(len(a) for a in item.attributes)
    for attribute, p in item.attributes.items():
        others = ", ".join(f"{label} {score:.0%}" for label, score in zip(p.labels[1:], p.scores[1:]))
        print(f"  {attribute:<{width}}  {p.scores[0]:6.1%}  {p.labels[0]}" + (f"   ({others})" if others else ""))


def _enroll(args: argparse.Namespace) -> int:
    from tailor.inference import Classifier
    from tailor.predictions import expand_images

    classifier = Classifier.load(args.run, _runtime(args))
    if not args.images:
        parents = [p.strip() for p in (args.parents or "").split(">")[::-1] if p.strip()]
        phrase = classifier.enroll_name(args.name, parents, replace=args.replace)
        print(f"enrolled {args.name!r} by name (scored as {phrase!r}); {args.run} now ranks "
              f"{len(classifier.classes)} categories, {len(classifier.model.name_only_classes)} of them by name")
        return 0
    print(f"refitting the head of {args.run} with the new examples…", file=sys.stderr)
    used, errors = classifier.enroll(args.name, expand_images(args.images), replace=args.replace)
    for err in errors:
        print(f"skipped {err}", file=sys.stderr)
    print(f"enrolled {args.name!r} from {used} image(s); {args.run} now ranks {len(classifier.trained_classes)} "
          f"trained and {len(classifier.enrolled)} enrolled categories")
    return 0


def _similar(args: argparse.Namespace) -> int:
    from tailor.config import session_threads
    from tailor.run_inputs import bound_ann as ann, bound_lookalike as settings
    from tailor.search.contact_sheet import contact_sheet
    from tailor.search.similar import ProductSearch

    filters = dict(_filter(text) for text in args.filter)
    _bindings(args)
    engine = _engine(args)
    search = ProductSearch.load(args.run, args.model, settings(), ann(), device=args.device, engine=engine,
                                onnx_threads=session_threads())
    neighbours = search.similar(args.image, k=args.k, same_class=args.same_class, filters=filters)
    narrowed = " and ".join([*(f"{c}={v}" for c, v in filters.items()), *(["its own class"] if args.same_class else [])])
    print(f"{args.image}: the {len(neighbours)} best look-alikes of {search.size} catalog products"
          + (f" ({narrowed})" if narrowed else ""))
    found = search.products([n.id for n in neighbours])
    shades = {n.id: (found.get(n.id) or {}).get("baseColour") for n in neighbours}
    coloured = any(shades.values())
    print(f"{'rank':>4}  {'id':<12}{'score':>7}{'distance':>9}  class" + ("  (colour)" if coloured else ""))
    for rank, n in enumerate(neighbours, 1):
        shade = f"  ({shades[n.id]})" if coloured and shades[n.id] else ""
        print(f"{rank:>4}  {n.id:<12}{n.score:>7.3f}{n.distance:>9.4f}  {n.label}{shade}")
    out = Path(args.out) if args.out else Path(args.run) / "similar" / f"{Path(args.image).stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(args.image, neighbours, [Path(n.root) / n.image for n in neighbours], out)
    print(f"wrote {out}")
    return 0


def _engine(args: argparse.Namespace):
    """The Qdrant collection ``--engine`` names (None without it)."""
    if not args.engine:
        return None
    from tailor.search.qdrant_engine import QdrantCatalog

    return QdrantCatalog.connect(args.engine, args.collection or Path(args.run).name)


def _filter(text: str) -> tuple[str, str]:
    """``COLUMN=VALUE`` of ``--filter``."""
    column, equals, value = text.partition("=")
    if not equals or not column.strip():
        raise ValueError(f"--filter {text!r}: write COLUMN=VALUE, e.g. --filter gender=Men")
    return column.strip(), value.strip()


def _bindings(args: argparse.Namespace) -> None:
    """Apply a command's ``-p`` gin bindings (none: the defaults)."""
    if getattr(args, "parameter", None):
        from tailor import configurables

        configurables.parse([], args.parameter)


def _export(args: argparse.Namespace) -> int:
    from tailor.deploy.export import export_model
    from tailor.run_folder import DataSource
    from tailor.run_inputs import bound_int8

    _bindings(args)
    calibration = DataSource(Path(args.calibration), Path(args.calibration_root)) if args.calibration else None
    info = export_model(args.run, args.out, quantize=args.quantize, calibration=calibration,
                        calibration_images=args.calibration_images, seed=args.seed, tta=not args.no_tta,
                        device=args.device, int8=bound_int8())
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out}: {info.kind}, {info.precision}, {size:.1f} MiB, input {info.size} px"
          + (", mirror-image average inside" if info.tta else ""))
    checked = info.measured.get("checked_on")
    if checked:
        print(f"checked against the torch model on {checked['images']} images of {checked['csv']}:")
        rows = info.measured if info.kind == "attributes" else {"": info.measured}
        for name, m in rows.items():
            if not isinstance(m, dict) or name in ("checked_on", "calibration"):
                continue
            if "cosine_mean" in m:
                print(f"  embedding cosine to torch: mean {m['cosine_mean']:.5f}, lowest {m['cosine_min']:.5f}")
                continue
            top1 = (f"top-1 torch {m['torch_top1']:.4f} → exported {m['export_top1']:.4f} "
                    f"({m['export_top1'] - m['torch_top1']:+.4f}), " if m["torch_top1"] is not None else "")
            print(f"  {name + ': ' if name else ''}{top1}same top-1 on {m['top1_agreement']:.1%}, "
                  f"largest probability difference {m['max_abs_difference']:.2e}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tailor.serve.launch import Launch, serve
    from tailor.serve.settings import is_loopback

    launch = Launch(run=args.run, search=args.search, host=args.host, port=args.port, token_file=args.token_file,
                    device=args.device, bindings=tuple(args.parameter), engine=args.engine,
                    collection=args.collection)
    if not is_loopback(args.host) and not args.token_file:
        print(f"tailor: listening on {args.host} without --token-file: /enroll and DELETE /classes are refused",
              file=sys.stderr)
    serve(launch, workers=args.workers, log_level="debug" if args.verbose else "info")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import pandas as pd

    from tailor.auditing.command import AUDIT_FOLDER, run_audit
    from tailor.evaluation.report import build_report

    from tailor import run_folder
    run_dir = Path(args.run)
    out = Path(args.out) if args.out else run_dir / AUDIT_FOLDER
    summary = run_audit(run_dir, args.csv, args.images, out, folds=args.folds, seed=args.seed,
                        duplicate_cosine=args.duplicate_cosine)
    issues = pd.read_csv(out / "label_issues.csv", dtype={"id": str})
    print(f"{summary['products']} products of {summary['csv']}: {summary['flagged_labels']} labels look wrong, "
          f"{summary['duplicate_pairs']} near-duplicate pairs")
    print(f"{'rank':>4}  {'id':<12}{'quality':>8}  label → looks like")
    for r in issues.head(args.show).itertuples():
        print(f"{r.rank:>4}  {r.id:<12}{r.label_quality:>8.3f}  {r.label} → {r.suggested} ({r.suggested_probability:.0%})")
    print(f"wrote {out / 'label_issues.csv'}, {out / 'duplicates.csv'}")
    if args.out is None and (run_dir / run_folder.RESULTS).is_file():
        print(f"wrote {build_report(run_dir)} (its audit section)")
    return 0


def _index(args: argparse.Namespace) -> int:
    from tailor.data.catalog import read_catalog
    from tailor.run_inputs import bound_ann as ann, bound_lookalike as settings
    from tailor.search import catalog_updates

    _bindings(args)
    if args.action == "info":
        for key, value in catalog_updates.index_info(args.run).items():
            print(f"{key:>15}: {', '.join(value) if isinstance(value, list) else value}")
        return 0
    if args.action == "convert":
        done = catalog_updates.convert_index(args.run)
        print(f"{done['index']}: " + (f"converted from {done['format']}" if done["converted"]
                                      else f"already {done['format']}, left as it is"))
        return 0
    if args.action == "push":
        catalog = catalog_updates.push_run_index(args.run, args.to, args.collection, settings().colour_weight)
        print(f"{args.run}: {len(catalog)} products pushed to {args.to}, collection {catalog.collection!r}")
        return 0
    if args.action == "add":
        catalog = read_catalog(args.table, label_column=args.label, root=args.images)
        done = catalog_updates.add_products(args.run, catalog, ann(), settings(), device=args.device,
                                            engine=_engine(args))
    else:
        done = catalog_updates.remove_products(args.run, args.ids, ann(), settings(), engine=_engine(args))
    for problem in done.skipped[:20]:
        print(f"skipped {problem}", file=sys.stderr)
    print(f"{args.run}: {done}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tailor.evaluation.report import build_report

    for run_dir in args.runs:
        print(f"wrote {build_report(run_dir)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tailor.evaluation.report import compare_runs

    markdown, md_path, png_path = compare_runs(args.runs, args.out)
    print(markdown)
    print(f"wrote {md_path} and {png_path}")
    return 0


DESCRIPTION = "Tailor pretrained image models to a product catalog: transfer learning, metric learning, few-shot."
EXAMPLES = """examples:
  tailor splits data/styles.csv experiments/splits --images data/sample/images
  tailor run -c configs/transfer.gin
  tailor run -c configs/transfer.gin -p "main.name='transfer_seed1'" -p "main.seed=1"
  tailor run -c configs/transfer.gin --train shop/train --test shop/test
  tailor predict experiments/transfer data/sample/images/15970.jpg
  tailor enroll experiments/transfer --class "Innerwear Vests" vest1.jpg vest2.jpg vest3.jpg
  tailor enroll experiments/finetune --class "Bow Ties" --parents "Accessories > Ties"
  tailor similar experiments/triplet data/sample/images/15970.jpg --k 10
  tailor export experiments/transfer transfer-int8.onnx --quantize int8
  tailor predict transfer-int8.onnx data/sample/images/15970.jpg
  tailor serve experiments/transfer --port 8000

Add -v to any command for debug logs and full tracebacks."""


def _device_options(p: argparse.ArgumentParser, devices: bool = False) -> None:
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N")
    if devices:
        p.add_argument("--devices", type=int, default=None,
                       help="split the images across this many processes, one per device (with --device cpu: "
                            "CPU processes); torchrun and srun set this themselves")


def _engine_options(p: argparse.ArgumentParser, updates: bool = False) -> None:
    """``--engine`` and ``--collection``: the catalog `tailor index push` put in Qdrant, which the command
    searches instead of the run's index.pt, or (``updates``) also changes after it."""
    does = "also update" if updates else "search"
    after = "after the run's index" if updates else "instead of the run's index.pt"
    p.add_argument("--engine", metavar="URL", help=f"{does} the catalog pushed into this Qdrant server (or local "
                                                   f"folder) by `tailor index push`, {after}")
    p.add_argument("--collection", help="the --engine collection (default: the run folder's name)")


def _binding_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--parameter", action="append", default=[],
                   help="a gin binding, e.g. 'onnx.session_threads.threads=4' or "
                        "\"export.quantize_int8.method='percentile'\"")


class _SubParser(argparse.ArgumentParser):
    """A sub-command's parser. ``trailing_into`` names an optional list positional that also takes the plain
    words after the options: argparse fills ``run`` and an empty ``images`` together at the first word, so in
    ``tailor enroll RUN --class NAME a.jpg b.jpg`` the images would otherwise be "unrecognized"."""

    trailing_into: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self.trailing_into:
            words = [r for r in rest if not r.startswith("-")]
            setattr(namespace, self.trailing_into, list(getattr(namespace, self.trailing_into) or []) + words)
            rest = [r for r in rest if r.startswith("-")]
        return namespace, rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailor", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubParser)

    p = sub.add_parser("splits", help="the seed's split protocol: train_top20 / train_other / test / classes.txt")
    p.add_argument("styles_csv", help="Kaggle's styles.csv (9- or 10-column layout)")
    p.add_argument("out_dir")
    p.add_argument("--top", type=int, default=20, help="how many of the most frequent categories (default 20)")
    p.add_argument("--images", help="keep only rows whose image is in this folder (a sample of the catalog); "
                                    "the top categories still come from the whole catalog")
    p.set_defaults(func=_splits)

    p = sub.add_parser("run", help="run an experiment from gin config files")
    p.add_argument("-c", "--config", action="append", default=[], required=True, help="a .gin file (repeatable)")
    p.add_argument("-p", "--parameter", action="append", default=[], help="a gin binding, e.g. 'main.num_epochs=10'")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming an existing run folder")
    p.add_argument("--train", metavar="DIR|CSV", help="train on this ImageFolder tree (DIR/<class>/<image>) or "
                                                      "table (image,label CSV or Kaggle's styles.csv)")
    p.add_argument("--test", metavar="DIR|CSV", help="score on this tree or table (every row: evaluate.group='all')")
    p.add_argument("--images", metavar="DIR", help="the folder a --train/--test table's image paths are relative "
                                                   "to (default: the table's own folder)")
    p.set_defaults(func=_run)

    p = sub.add_parser("predict", help="top-k categories for images (a folder gives a CSV)")
    p.add_argument("run", help="a run folder, its model.pt, or a model exported by tailor export (.onnx)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--csv", help="write predictions to this CSV (default for folders: predictions.csv)")
    _binding_option(p)
    _device_options(p, devices=True)
    p.set_defaults(func=_predict)

    p = sub.add_parser("enroll", help="add a category to a trained model from a few example images")
    p.add_argument("run", help="a run folder")
    p.add_argument("--class", dest="name", required=True, help="the new category's name")
    p.add_argument("images", nargs="*", help="example images or folders; none: the category is added by its name "
                                             "alone (a run trained with names.enabled = True)")
    p.add_argument("--parents", help="with no image: the category's place in the taxonomy, e.g. "
                                     "\"Accessories > Headwear\" (it sharpens what the name means)")
    p.add_argument("--replace", action="store_true", help="enroll anew a category that is already enrolled")
    p.trailing_into = "images"
    _device_options(p)
    p.set_defaults(func=_enroll)

    p = sub.add_parser("similar", help="the catalog's look-alikes of an image: same kind, same colour (a metric-learning run)")
    p.add_argument("run", help="a run folder of configs/triplet.gin")
    p.add_argument("image", help="the query image")
    p.add_argument("-k", "--k", type=int, default=10, help="how many neighbours (default 10)")
    p.add_argument("--out", help="the contact sheet PNG (default: RUN/similar/<image name>.png)")
    p.add_argument("--model", help="embed the query with this exported copy of the run's model (tailor export)")
    p.add_argument("--same-class", action="store_true",
                   help="only products of the query's category (its catalog class, else the one its neighbours vote for)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="only products whose catalog COLUMN is VALUE (repeatable), e.g. --filter gender=Men")
    _engine_options(p)
    _binding_option(p)
    _device_options(p)
    p.set_defaults(func=_similar)

    p = sub.add_parser("export", help="a run's model as one ONNX file for serving (fp32, or int8 for CPUs)")
    p.add_argument("run", help="a run folder (or its model.pt): classifier, ensemble, multi-attribute or embedding")
    p.add_argument("out", help="the exported file (.onnx)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the file format (default: %(default)s)")
    p.add_argument("--quantize", choices=["int8"], help="int8 weights and activations, calibrated on training images")
    p.add_argument("--calibration", metavar="CSV", help="calibrate on this table's images (default: the run's "
                                                          "training table)")
    p.add_argument("--calibration-root", default="data/sample",
                   help="the folder the --calibration table's paths are relative to (default: %(default)s)")
    p.add_argument("--calibration-images", type=int, default=256, help="how many (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="picks the calibration images (default: %(default)s)")
    p.add_argument("--no-tta", action="store_true", help="leave the mirror-image average out of the graph")
    _binding_option(p)
    _device_options(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="a run behind an HTTP API and a web page (predict, similar, enroll)")
    p.add_argument("run", help="a run folder (classifier, multi-attribute or metric-learning) or an exported .onnx")
    p.add_argument("--search", metavar="RUN", help="answer /similar from this metric-learning run's catalog index")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s, this "
                                                        "machine only)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--token-file", help="a file holding the bearer token that /enroll and DELETE need")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model "
                                                          "(default: %(default)s)")
    _engine_options(p)
    _binding_option(p)
    _device_options(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("audit", help="labels of a run's training table that look wrong, and products listed twice")
    p.add_argument("run", help="a run folder: its config.gin says which table it trained on")
    p.add_argument("--csv", help="audit this table instead (with --images)")
    p.add_argument("--images", help="the data root of --csv")
    p.add_argument("--out", help="where to write (default: RUN/audit, and the run's report gets an audit section)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the held-out probabilities (default 5)")
    p.add_argument("--seed", type=int, default=0, help="the folds' seed (default 0)")
    p.add_argument("--duplicate-cosine", type=float, default=0.95,
                   help="feature cosine at which two photos count as one product listed twice (default 0.95)")
    p.add_argument("--show", type=int, default=10, help="suspicious labels printed (default 10; the CSV has all)")
    p.set_defaults(func=_audit)

    p = sub.add_parser("index", help="a metric-learning run's catalog index: add products, remove them, describe it, "
                                           "or push it into Qdrant")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("add", help="embed a table's products with the run's model and add them (same id: replaced)")
    q.add_argument("run", help="a run folder of configs/triplet.gin")
    q.add_argument("table", help="the new products: an image,label CSV, Kaggle's styles.csv or an ImageFolder tree")
    q.add_argument("--images", help="the folder the table's image paths are relative to (default: the table's own)")
    q.add_argument("--label", help="the table's category column (default: articleType or label)")
    _engine_options(q, updates=True)
    _binding_option(q)
    _device_options(q)
    q = actions.add_parser("remove", help="remove products by id")
    q.add_argument("run", help="a run folder of configs/triplet.gin")
    q.add_argument("ids", nargs="+", help="product ids")
    _engine_options(q, updates=True)
    _binding_option(q)
    q = actions.add_parser("info", help="what the index holds and how it is searched")
    q.add_argument("run", help="a run folder of configs/triplet.gin")
    _binding_option(q)
    q = actions.add_parser("convert", help="write an index of an earlier format in the current one "
                                           "(memory-mapped files)")
    q.add_argument("run", help="a run folder of configs/triplet.gin")
    q = actions.add_parser("push", help="copy the index into a Qdrant collection (a server, a cluster, or a folder)")
    q.add_argument("run", help="a run folder of configs/triplet.gin")
    q.add_argument("--to", required=True, metavar="URL",
                   help="a Qdrant URL (http://host:6333; its key from $QDRANT_API_KEY) or a local folder")
    q.add_argument("--collection", help="the collection (default: the run folder's name); pushing replaces it")
    _binding_option(q)
    p.set_defaults(func=_index)

    p = sub.add_parser("report", help="(re)build a run's self-contained report.html")
    p.add_argument("runs", nargs="+", help="run folders")
    p.set_defaults(func=_report)

    p = sub.add_parser("compare", help="the headline metrics of several runs side by side (markdown + bar chart)")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="experiments/compare", help="output path without suffix (default: %(default)s)")
    p.set_defaults(func=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch is imported: a server sets up OpenMP first
    if args.command == "serve":
        from tailor.serve.launch import passive_openmp
        passive_openmp()
    from tailor.machine import keep_freed_memory
    keep_freed_memory()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname).1s %(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it could not load
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tailor: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # user-facing: one line, the type only when it adds something
        if args.verbose or os.environ.get("TAILOR_TRACEBACK"):
            raise
        from tailor.errors import describe
        print(f"tailor: error: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
