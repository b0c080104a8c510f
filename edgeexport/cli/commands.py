"""The commands that are not a target's: the zoo (``list``, ``info``), recipes (``run``), artifacts built
elsewhere (``check``, ``bundle``, ``verify``), reports (``report``), data and training, the machine
(``targets``, ``doctor``) and the cluster (``matrix``). Each is a thin caller of the library."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgeexport.cli.app import (app, command_line, console, exit_with, handle_errors, parse_options, print_json,
                                    refuse_not_run, show, status_for)
from edgeexport.cli.targets import Common, default_stages_off, execute
from edgeexport.datasets import get_dataset
from edgeexport.datasets.shapes import SPLITS
from edgeexport.doctor import doctor as doctor_rows
from edgeexport.doctor import ray_resources as offered_resources
from edgeexport.doctor import target_rows
from edgeexport.errors import UserError
from edgeexport.keys import fingerprint, generate_keypair
from edgeexport.recipe import Recipe
from edgeexport.targets.registry import DEFAULT_MATRIX_KINDS
from edgeexport.report.text import print_report
from edgeexport.zoo import get_entry, list_models, resolve_name
from edgeexport.util import plain_name
from edgeexport.zoo.pretrained import trained_for


@app.command("list")
@handle_errors
def list_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the registered models."""
    rows = []
    for name in list_models():
        e = get_entry(name)
        rows.append({"name": name, "aliases": list(e.aliases), "family": e.meta.family, "task": e.meta.task,
                     "input_size": list(e.meta.input_size), "num_classes": e.meta.num_classes})
    if as_json:
        print_json(rows)
        return
    for r in rows:
        alias = f" (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']:<28} {r['task']:<15} {'x'.join(map(str, r['input_size'])):<12} {r['family']}{alias}")


@app.command()
@handle_errors
def info(name: str = typer.Argument(..., help="zoo model name"),
         as_json: bool = typer.Option(False, "--json"),
         num_classes: Optional[int] = typer.Option(None, "--num-classes"),
         state_dict_shapes: bool = typer.Option(False, "--state-dict-shapes",
                                                help="print {key: shape} of the model's state dict as JSON")):
    """Parameters, MACs, input shape and outputs of a model."""
    import torch

    from edgeexport.source import count_macs, load_model

    handle = load_model(name, weights="init", num_classes=num_classes)
    if state_dict_shapes:
        print_json(json.dumps({k: list(v.shape) for k, v in handle.model.state_dict().items()}, indent=1))
        return
    shape = (1, *handle.meta.input_size)
    x = torch.zeros(shape)
    handle.probe(x)
    meta = handle.meta
    d = {**handle.info(shape), "macs": count_macs(handle.model, x), "family": meta.family, "paper": meta.paper,
         "num_classes": meta.num_classes, "published_params": meta.published_params, "resize": meta.resize,
         "notes": meta.notes}
    d["weights"] = "default: seeded, BatchNorm re-estimated on the bundled photos (use --weights for yours)"
    d["trained_weights"] = [w.describe() for w in trained_for(handle.origin.removeprefix("zoo:"))]
    if as_json:
        print_json(d)
        return
    for k, v in d.items():
        if k == "trained_weights":
            continue
        if isinstance(v, int) and k in ("params", "macs", "published_params"):
            v = f"{v:,}"
        print(f"{k:>17}: {v}")
    for w in d["trained_weights"]:
        ev = w["eval"] or {}
        where = "shipped" if w["shipped"] else "trained on demand into the cache"
        state = ("; eager " + ", ".join(f"{k} {ev[k]:.4f}" for k in ("miou", "pixel_accuracy", "top1", "top5")
                                       if ev.get(k) is not None) + f" on {ev.get('images')} {w['dataset']} eval images"
                 if ev else "; not on this machine yet")
        r = w["recipe"]
        print(f"{'--weights':>17}: {w['weights']} ({where}{state})")
        print(f"{'':>17}  recipe: {r['steps']} steps x {r['batch']} at {r['size']}px, AdamW lr {r['lr']:g}, "
              f"seed {r['seed']}: edgeexport train {w['weights'].split(':')[0]} --tag {w['weights'].split(':')[1]}")


# ---------------------------------------------------------------- per-target commands (from the registry)



@app.command()
@handle_errors
def keygen(output: Path = typer.Option(..., "--output", "-o", help="folder for NAME.key and NAME.pub"),
           name: str = typer.Option("edgeexport", "--name", help="file name stem")):
    """Make an Ed25519 key pair for signing bundles: NAME.key (private, mode 0600) and NAME.pub (public)."""
    priv, pub, fp = generate_keypair(output, name)
    print(f"wrote {priv} (private: keep it on the build host) and {pub} (public: give it to verifying machines)")
    print(f"key fingerprint: {fp}")
    print(f"sign: edgeexport bundle MODEL --artifact FILE --sign-key {priv}; check: edgeexport verify BUNDLE "
          f"--trust-key {pub}")




@app.command()
@handle_errors
def run(recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML"),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="override the recipe's output folder"),
        weights: Optional[str] = typer.Option(None, "--weights", help="override the recipe's weights"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
        as_json: bool = typer.Option(False, "--json")):
    """Run every stage of a recipe and report parity and latency of every artifact."""
    recipe = Recipe.from_yaml(recipe_path)
    if output:
        recipe.output = output
    if weights:
        recipe.weights = weights
    execute(recipe, quiet, as_json)


ARTIFACT_MODEL_OPTIONS = dict(
    weights=typer.Option(None, "--weights", help="the eager model's weights (MODEL:TAG or a file)"),
    model=typer.Option(None, "--model", help="the eager model as package.module:factory (NAME is then its name)"),
    shape=typer.Option(None, "--shape", help="input shape NxCxHxW (default: the model's own)"),
    images=typer.Option(4, "--images", help="evaluation images"),
    precision=typer.Option(None, "--precision", help="fp32 | fp16 | int8 (default: the format's, from the file name)"),
    runner_option=typer.Option(None, "--option", help="runner option KEY=VALUE (repeatable; e.g. compute_units=all); "
                                                      "values are JSON when they parse"),
)


@app.command()
@handle_errors
def check(artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="an artifact file (see `edgeexport "
                                                                           "targets` for the formats)"),
          name: str = typer.Argument(..., help="the zoo model it was built from (or its name, with --model)"),
          weights: Optional[str] = ARTIFACT_MODEL_OPTIONS["weights"], model: Optional[str] = ARTIFACT_MODEL_OPTIONS["model"],
          shape: Optional[str] = ARTIFACT_MODEL_OPTIONS["shape"], images: int = ARTIFACT_MODEL_OPTIONS["images"],
          precision: Optional[str] = ARTIFACT_MODEL_OPTIONS["precision"],
          runner_option: Optional[list[str]] = ARTIFACT_MODEL_OPTIONS["runner_option"],
          eval_data: Optional[str] = typer.Option(None, "--eval-data", help="labeled data for task metrics"),
          output: Optional[str] = typer.Option(None, "--output", "-o", help="report folder (default: the artifact's)"),
          threads: Optional[int] = typer.Option(None, "--threads"), runs: int = typer.Option(30, "--runs"),
          quiet: bool = typer.Option(False, "--quiet", "-q"), as_json: bool = typer.Option(False, "--json")):
    """Judge an artifact built elsewhere against the eager model: task metrics, parity, latency beside eager."""
    from edgeexport import api

    common = Common(weights=weights, model=model, shape=shape, output=output or str(artifact.parent), images=images,
                    runs=runs, threads=threads, eval_data=eval_data)
    recipe = common.recipe(name, default_stages_off())
    err = console(quiet)
    rep = api.check_recipe(recipe, artifact, precision=precision, runner_options=parse_options(runner_option),
                           log=err.print, status=status_for(err), command=command_line())
    kind = next(iter(rep.artifacts))
    stem = Path(recipe.output) / f"{recipe.name or plain_name(rep.model.name)}.{kind}.check.report"
    show(rep, quiet, as_json, [stem.with_suffix(".md"), stem.with_suffix(".html")])
    refuse_not_run(next(iter(rep.artifacts.values())))
    exit_with(rep)


@app.command()
@handle_errors
def bundle(name: str = typer.Argument(..., help="zoo model the artifact was built from"),
           artifact: Path = typer.Option(..., "--artifact", help="an artifact file edgeexport built (see "
                                                                 "`edgeexport targets` for the formats)"),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="bundle folder to write"),
           weights: Optional[str] = ARTIFACT_MODEL_OPTIONS["weights"], model: Optional[str] = ARTIFACT_MODEL_OPTIONS["model"],
           shape: Optional[str] = ARTIFACT_MODEL_OPTIONS["shape"], images: int = ARTIFACT_MODEL_OPTIONS["images"],
           precision: Optional[str] = ARTIFACT_MODEL_OPTIONS["precision"],
           runner_option: Optional[list[str]] = ARTIFACT_MODEL_OPTIONS["runner_option"],
           sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM or raw 32 "
                                                   "bytes, e.g. from `edgeexport keygen`) that signs the manifest")):
    """Write a self-contained parity bundle: artifact, inputs, eager outputs, tolerances, how to run it."""
    from edgeexport.pipeline import bundle_file

    common = Common(weights=weights, model=model, shape=shape, output=str(artifact.parent), images=images, runs=1,
                    no_bench=True, eval_data="none")
    out, manifest = bundle_file(common.recipe(name, default_stages_off()), artifact, output, precision,
                                parse_options(runner_option), sign_key)
    signed = ""
    if "signature" in manifest:
        signed = f", signed by key {fingerprint(bytes.fromhex(manifest['signature']['public_key']))}"
    print(f"wrote {out} ({manifest['artifact']['backend']}, {manifest['artifact']['precision']}, "
          f"{len(manifest['input_shapes'])} input batch(es){signed}); check it on the target with: edgeexport verify "
          f"{out}" + (" --trust-key PUB" if signed else ""))


@app.command()
@handle_errors
def verify(bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
           threads: Optional[int] = typer.Option(None, "--threads"),
           runs: int = typer.Option(30, "--runs"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json"),
           trust_key: Optional[list[Path]] = typer.Option(None, "--trust-key", help="Ed25519 public key (PEM or "
                                                          "raw 32 bytes); refuse a bundle not signed by it "
                                                          "(repeat for several keys)")):
    """Run a bundle's artifact with the runtime installed here: parity and latency (no torch, no model code).

    The report says whether the bundle was signed and by which key (fingerprint: SHA-256 of the raw
    public key); with --trust-key an unsigned, foreign-signed or altered bundle is refused (exit 2).
    """
    from edgeexport import api

    rep = api.verify(bundle_path, trust_keys=trust_key or (), threads=threads, runs=runs)
    show(rep, quiet, as_json)
    refuse_not_run(next(iter(rep.artifacts.values())))
    exit_with(rep)


def merge_reports(paths: list[Path], output: Path | None, out) -> None:
    """``report --merge HOST DEVICE...``: the table on stdout and its markdown beside the host's report."""
    from edgeexport import api
    from edgeexport.report.merge import merged_markdown, merged_table
    from edgeexport.util import atomic_path

    if len(paths) < 2:
        raise UserError("--merge takes the host's report and at least one device's: report --merge HOST DEVICE...")
    host, devices = api.load_report(paths[0]), [api.load_report(p) for p in paths[1:]]
    text = merged_markdown(host, devices, paths)
    out.print(merged_table(host, devices))
    page = output or paths[0].parent / (paths[0].name.removesuffix(".json").removesuffix(".report") + ".merged.md")
    with atomic_path(page) as tmp:
        tmp.write_text(text)
    out.print(f"report: {page}", markup=False, highlight=False)


@app.command("report")
@handle_errors
def report_cmd(paths: list[Path] = typer.Argument(..., metavar="REPORT_JSON...",
                                                 help="a NAME.report.json edgeexport wrote (with --merge: the host's "
                                                      "report, then each device's verify report)"),
               merge: bool = typer.Option(False, "--merge", help="the host's and each device's parity and latency per "
                                                                 "artifact, side by side, naming each machine"),
               html: bool = typer.Option(False, "--html", help="(re)write the self-contained HTML page beside it"),
               open_page: bool = typer.Option(False, "--open", help="open the page in a browser (implies --html)"),
               output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                     help="where to write the page (default: NAME.report.html "
                                                          "beside the JSON)")):
    """Re-render an existing report: the terminal table and, with --html, the HTML page (from the JSON alone)."""
    from edgeexport import api
    from edgeexport.matrix import write_matrix_html
    from edgeexport.report.html import write_html

    out = console(stderr=False)
    if merge:
        return merge_reports(paths, output, out)
    if len(paths) != 1:
        raise UserError("report takes one REPORT_JSON (several only with --merge HOST DEVICE...)")
    path = paths[0]
    rep = api.load_report(path)
    print_report(rep, out)
    page = None
    if rep.kind == "matrix":
        if output is not None:
            raise UserError("--output: a matrix page links the model pages beside it; it is written beside its JSON")
        if html or open_page:
            page = write_matrix_html(rep, path.parent)
    elif html or open_page or output:
        name = path.name.removesuffix(".json").removesuffix(".report")
        page = write_html(rep, output or path.parent / f"{name}.report.html")
    if page is not None:
        out.print(f"report: {page}", markup=False, highlight=False)
        if open_page:
            import webbrowser

            webbrowser.open(page.resolve().as_uri())


@app.command()
@handle_errors
def data(name: str = typer.Argument(..., help="built-in labeled task: shapes_seg | shapes_cls"),
         split: str = typer.Option("eval", "--split", help="train | calib | val | eval"),
         count: int = typer.Option(40, "--count", min=1, help="images to write"),
         seed: int = typer.Option(0, "--seed", help="a seed no reference result used gives a fresh set"),
         size: Optional[str] = typer.Option(None, "--size", help="HxW (default: the task's own, e.g. 520x520)"),
         output: Path = typer.Option(..., "--output", "-o", help="folder to write (must not exist or be empty)")):
    """Write a built-in labeled task as a folder (ImageFolder, or images/ + masks/) for --eval-data."""
    from edgeexport.datasets.labeled import from_builtin, write_folder

    ds = get_dataset(name)
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}")
    hw = None
    if size:
        try:
            hw = tuple(int(v) for v in size.lower().split("x"))
        except ValueError:
            hw = ()
        if len(hw) != 2 or min(hw) < 16 or max(hw) > 4096:
            raise UserError(f"--size {size!r}: expected HxW between 16 and 4096, e.g. 520x520")
    out = write_folder(from_builtin(ds, split, seed, count, hw), output,
                       {"generator": f"edgeexport data {name} --split {split} --count {count} --seed {seed}"})
    print(f"wrote {count} {ds.task} images of {name} ({split}, seed {seed}) to {out}; "
          f"use it with --eval-data {out}")


@app.command()
@handle_errors
def train(name: str = typer.Argument(..., help="zoo model with a training recipe"),
          tag: str = typer.Option("shapes", "--tag"),
          output: Optional[str] = typer.Option(None, "--output", "-o",
                                               help="safetensors file (default: where --weights NAME:TAG finds it)"),
          steps: Optional[int] = typer.Option(None, "--steps", help="fewer steps for a quick try (not the recipe)"),
          threads: Optional[int] = typer.Option(None, "--threads")):
    """Train reference weights on a built-in task from their recipe (CPU, or a CUDA GPU when visible)."""
    from edgeexport.training import run_training

    run_training(resolve_name(name), tag, output, steps, threads, log=lambda m: print(m, file=sys.stderr))


@app.command()
@handle_errors
def targets(as_json: bool = typer.Option(False, "--json")):
    """Every registered target: its formats, whether it can build and run here, and how to install it."""
    rows = target_rows()
    if as_json:
        print_json(rows)
        return
    for r in rows:
        build = "builds here" if r["build"]["ok"] else f"cannot build here ({r['build']['reason']})"
        run_ = "runs here" if r["run"]["ok"] else f"cannot run here ({r['run']['reason']})"
        print(f"{r['name']:<11} {r['title']:<13} {build}; {run_}")
        for f in r["formats"]:
            print(f"{'':<11}   {f['kind']:<20} NAME{f['suffix']:<24} {f['precision']:<5} {f['runs_on']}")
        if not (r["build"]["ok"] and r["run"]["ok"]):
            print(f"{'':<11}   install: {r['install']}")


@app.command()
@handle_errors
def doctor(as_json: bool = typer.Option(False, "--json"),
           ray_resources: bool = typer.Option(False, "--ray-resources",
                                              help="print the Ray resources this machine offers, as JSON for "
                                                   "`ray start --resources=...` (the runtimes that run here)")):
    """Which backends are installed here, their versions, and how to install the missing ones."""
    if ray_resources:
        print(json.dumps(offered_resources(), separators=(",", ":")))
        return
    rows = doctor_rows()
    if as_json:
        print_json(rows)
        return
    for r in rows:
        line = f"{r['backend']:<21} {r['status']:<27} {r['version'] or '':<12}"
        if r["reason"]:
            line += f" {r['reason']}"
        if r["install"]:
            line += f"  -> {r['install']}"
        print(line.rstrip())


@app.command()
@handle_errors
def matrix(models: Optional[list[str]] = typer.Argument(None, metavar="RECIPE_OR_MODEL...",
                                                        help="zoo models (their recipes/NAME.yaml when there is one) "
                                                             "or recipe YAML files"),
           targets_: Optional[str] = typer.Option(None, "--targets",
                                                  help="artifact kinds, comma-separated (`edgeexport targets` lists "
                                                       f"them; default: {','.join(DEFAULT_MATRIX_KINDS)}; with "
                                                       "--resume, the stored plan's)"),
           cluster: str = typer.Option("local", "--cluster", help="local (a Ray instance here, loopback only), "
                                                                  "auto, or ray://HOST:PORT / HOST:PORT of a cluster"),
           cache: Optional[Path] = typer.Option(None, "--cache", help="content-addressed cell cache (default: "
                                                                      "$EDGEEXPORT_CACHE/matrix or "
                                                                      "~/.cache/edgeexport/matrix)"),
           no_cache: bool = typer.Option(False, "--no-cache", help="build every cell again (results still cached)"),
           resume: bool = typer.Option(False, "--resume", help="continue the interrupted matrix in --output "
                                                               "without redoing its finished cells"),
           output: Path = typer.Option(Path("out/matrix"), "--output", "-o"),
           threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPUs per cell task, and threads "
                                                                            "for every backend's timings (default 1)"),
           retries: int = typer.Option(2, "--retries", min=0, help="retries of a cell whose worker process dies"),
           cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="size of a local cluster (default: every "
                                                                          "core); 1 runs the cells one after another"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json", help="print the matrix report as JSON")):
    """Every model through every target as Ray tasks: cached, resumable, verified where the runtime is."""
    from edgeexport import api

    err = console(quiet)
    kinds = None if targets_ is None else [k.strip() for k in targets_.split(",") if k.strip()]
    rep = api.matrix(models or [], kinds, cluster=cluster,
                     cache=cache, use_cache=not no_cache, resume=resume, output=output, threads=threads,
                     retries=retries, cpus=cpus, log=lambda m: err.print(m, markup=False, highlight=False),
                     command=command_line())
    show(rep, quiet, as_json, [output / "matrix.report.md", output / "matrix.report.html"])
    exit_with(rep)




@app.command()
@handle_errors
def diff(artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="an artifact file (see `edgeexport "
                                                                          "targets` for the formats)"),
         name: str = typer.Argument(..., help="the zoo model it was built from (or its name, with --model)"),
         weights: Optional[str] = ARTIFACT_MODEL_OPTIONS["weights"], model: Optional[str] = ARTIFACT_MODEL_OPTIONS["model"],
         shape: Optional[str] = ARTIFACT_MODEL_OPTIONS["shape"], precision: Optional[str] = ARTIFACT_MODEL_OPTIONS["precision"],
         runner_option: Optional[list[str]] = ARTIFACT_MODEL_OPTIONS["runner_option"],
         settle_bn: bool = typer.Option(False, "--settle-bn", help="settle BatchNorm statistics as the export did"),
         output: Optional[str] = typer.Option(None, "--output", "-o", help="report folder (default: the artifact's)"),
         threads: Optional[int] = typer.Option(None, "--threads"),
         quiet: bool = typer.Option(False, "--quiet", "-q"), as_json: bool = typer.Option(False, "--json")):
    """Where an artifact departs from the eager model, layer by layer: its runtime's intermediate tensors paired
    with the model's modules. Exit 1 when a layer falls below its precision's SNR threshold."""
    from edgeexport import api

    common = Common(weights=weights, model=model, shape=shape, output=output or str(artifact.parent), images=1,
                    runs=1, threads=threads, eval_data="none", settle_bn=settle_bn, no_bench=True)
    recipe = common.recipe(name, default_stages_off())
    err = console(quiet)
    rep = api.diff_recipe(recipe, artifact, precision=precision, runner_options=parse_options(runner_option),
                          log=err.print, status=status_for(err), command=command_line())
    art = next(iter(rep.artifacts.values()))
    stem = Path(recipe.output) / f"{recipe.name or plain_name(rep.model.name)}.{art.kind}.diff.report"
    show(rep, quiet, as_json, [stem.with_suffix(".md"), stem.with_suffix(".html")])
    refuse_not_run(art)
    if art.layers is not None and not art.layers.layers and art.layers.note:
        raise UserError(f"{art.kind}: {art.layers.note}")
    raise typer.Exit(1 if (art.layers and art.layers.first_divergent) or rep.verdict == "failed" else 0)
