"""``shaperctl train supernet``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .common import ShaperGroup, emit, json_option, progress, table


@click.group(cls=ShaperGroup)
def train() -> None:
    """Train super networks."""


@train.command("supernet")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="The super network to start from (for distill, also the teacher).")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="A .txt file or a folder of them; one text per line.")
@click.option("--objective", type=click.Choice(["mlm", "distill"]), default="distill",
              show_default=True, help="Masked-LM, or match the source's hidden states.")
@click.option("--steps", required=True, type=int, help="Optimizer steps.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Training folder: checkpoint/ (resumed automatically), supernet/, train.json.")
@click.option("--batch-size", default=16, show_default=True, type=int,
              help="Blocks per process per step.")
@click.option("--seq-len", default=128, show_default=True, type=int, help="Tokens per block.")
@click.option("--random-shapes", default=2, show_default=True, type=int,
              help="Random shapes per step besides the largest and the smallest.")
@click.option("--lr", default=5e-5, show_default=True, type=float, help="Peak learning rate.")
@click.option("--warmup-steps", default=0, show_default=True, type=int)
@click.option("--checkpoint-every", default=100, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def supernet(supernet_path: Path, data_path: Path, objective: str, steps: int, out: Path,
             batch_size: int, seq_len: int, random_shapes: int, lr: float, warmup_steps: int,
             checkpoint_every: int, seed: int, as_json: bool) -> None:
    """Sandwich-rule training: each step the largest, smallest and random shapes.

    On many processes, launch the same command with torchrun; an interrupted run resumes
    from --out/checkpoint with the same data order and shape draws.

    \b
    Examples:
      shaperctl train supernet --supernet ./super --data texts/ --steps 500 --out runs/t
      torchrun --nproc-per-node 4 -m shaper_deploy.cli.main train supernet \\
          --supernet ./super --data texts/ --steps 500 --out runs/t
    """
    from shaper_deploy.supernet import read_checkpoint_header
    from shaper_deploy.training.data import read_texts, tokenize
    from shaper_deploy.training.sandwich import TrainConfig, train_supernet

    config = TrainConfig(objective=objective, steps=steps, batch_size=batch_size,
                         seq_len=seq_len, random_shapes=random_shapes, lr=lr,
                         warmup_steps=warmup_steps, checkpoint_every=checkpoint_every,
                         seed=seed)
    header = read_checkpoint_header(supernet_path)
    tokenizer = Path(supernet_path) / "tokenizer.json"
    if not tokenizer.is_file():
        raise click.ClickException(f"super network {supernet_path} has no tokenizer.json, "
                                   "which training needs to read text")
    if seq_len > header["config"].space.max_positions:
        raise click.BadParameter(f"{seq_len} exceeds the model's "
                                 f"{header['config'].space.max_positions} positions",
                                 param_hint="--seq-len")
    corpus = tokenize(read_texts(data_path), tokenizer.read_bytes(), seq_len,
                      config.val_fraction)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report for all ranks
        progress(f"{len(corpus.train)} training and {len(corpus.val)} validation blocks of "
                 f"{seq_len} tokens")
    summary = train_supernet(supernet_path, corpus, config, out, progress)
    if summary["validation"] is None:  # not rank 0: the launcher's rank 0 reports
        return
    summary = {k: v for k, v in summary.items() if k != "history"}
    emit({"out": str(out), **summary}, as_json, lambda d: table([
        ("trained", f"{d['steps']} steps, {d['objective']}, {d['world_size']} process(es)"),
        ("validation", ", ".join(f"{k} {v['loss']:.4f}" for k, v in d["validation"].items())),
        ("super network", str(Path(d["out"]) / "supernet"))]))

