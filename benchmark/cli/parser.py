"""The ``run`` command's flags (one-line errors: exit status 2, no usage block) and the names of the
subcommands."""
from __future__ import annotations

import argparse

from benchmark.core.errors import UserError

SUBCOMMANDS = ("run", "report", "samples", "prepare", "status", "recipes", "masks")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (a UserError: exit status 2, no usage block)."""

    def error(self, message: str):
        raise UserError(f"{message} (see python {self.prog} --help)")


def run_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="run_benchmark.py", description=(
        "Train methods for multi-label recognition with partial labels across a grid of known-label "
        "proportions and write a leaderboard. Subcommands: report --out DIR | status --out DIR | samples --out PNG | "
        "prepare --dataset NAME --data-root PATH | masks export --out PACK.npz | masks check PACK.npz."))
    p.add_argument("--methods", nargs="+", help="methods to run, or 'all' (default: every method in the default grid)")
    p.add_argument("--dataset", nargs="+", default=["synthetic"], help="dataset name(s) (default: synthetic)")
    p.add_argument("--ratios", default="0.1:0.9", help="known-label proportions: a:b, a:b:step or a,b,c (default 0.1:0.9)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; seed 0 = the official mask generator")
    p.add_argument("--data-root", help="folder of a real dataset (VOC 2007, MS-COCO 2014, NUS-WIDE, VG-200)")
    p.add_argument("--preset", help="real datasets: the choices of a code base, hcp (HST/DSRB code) | clsl")
    p.add_argument("--protocol", choices=("frozen", "finetune"), help="frozen (heads on a frozen trunk; the CPU "
                   "profiles' default) | finetune (the whole network; paper and official profiles)")
    p.add_argument("--profile", default="default", help="smoke | default (CPU, the suite's recipes) | paper (each "
                   "method's official recipe on the common ResNet-101 trunk) | official (each method's own paper "
                   "setting); see: python run_benchmark.py recipes")
    p.add_argument("--mask-protocol", help="random (HCP code; default) | random_clsl (CLSL code) | single_positive")
    p.add_argument("--mask-pack", metavar="FILE.npz", help="train on the masks of a mask pack (run_benchmark.py masks "
                   "export; docs/mask_packs.md), verified first; a mask equal to the suite's own keeps its run id, "
                   "another one gets a new id")
    p.add_argument("--epochs", type=int, help="override the recipe's number of epochs (recorded as an override)")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size (the global one)")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--image-size", type=int, help="override the recipe's image size")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="training precision (default: the "
                   "recipe's; fp32 never autocasts; bf16 / fp16 train under autocast, fp16 on a GPU only)")
    p.add_argument("--backbone", help="any timm model name (default: the recipe's)")
    p.add_argument("--backbone-weights", help="local weights file, or 'packaged' (EfficientNet-Lite0 from its package)")
    p.add_argument("--clip-weights", help="local CLIP weights for the CLIP methods (dualcoop): an OpenAI file such as "
                   "RN101.pt or an OpenCLIP checkpoint; needed on the paper and official profiles (the CPU profiles "
                   "use a tiny random CLIP without it; nothing is downloaded)")
    p.add_argument("--clip-arch", help="the CLIP's architecture: RN50 | RN101 | ViT-B-16 | ViT-L-14-336 (with "
                   "--clip-weights; default: the method's recipe) or tiny-RN | tiny-ViT (random; the CPU profiles' "
                   "default)")
    p.add_argument("--embeddings", help="label embeddings: glove | minilm | random[:DIM] | file:PATH.npy (default: "
                   "glove on the CPU profiles; the paper and official profiles need the recipe's own vectors as a file)")
    p.add_argument("--set", dest="overrides", nargs="*", metavar="KEY=VALUE", help="method config overrides: key=value for every method, method.key=value for one")
    p.add_argument("--out", help="output folder (default: results/<dataset>-<protocol>-<profile>)")
    p.add_argument("--grid", metavar="FILE.yaml", help="run the experiment of a grid file (methods, datasets, "
                   "proportions, seeds, profile, overrides...); flags given as well win over its values")
    p.add_argument("--write-grid", metavar="FILE.yaml", help="also write this command's experiment as a grid file "
                   "(re-run it with --grid FILE.yaml)")
    p.add_argument("--plugins", nargs="*", default=[], help="folders with extra method files")
    p.add_argument("--workers", type=int, help="data-loader workers (finetune protocol; default: the profile's, "
                   "0 on the CPU profiles, 4 on paper and official)")
    p.add_argument("--jobs", type=int, help="runs trained at the same time, each in its own process (default: one per "
                   "CPU core, at most 8; with GPUs one per GPU, each worker pinned to its own)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: cores / jobs)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last checkpoint")
    p.add_argument("--list", action="store_true", help="list registered methods, datasets and profiles, then exit")
    p.add_argument("--no-report", action="store_true", help="skip writing the leaderboard after the grid")
    p.add_argument("--tensorboard", action="store_true", help="also log losses, diagnostics and metrics to TensorBoard "
                   "in each run folder (tensorboard --logdir <out>)")
    p.add_argument("--launcher", default="local", help="local (train here; default) | slurm (submit the unfinished "
                   "runs as one SLURM job array through submitit, then return) | pytorch (under torchrun: every "
                   "run on all the ranks with DistributedDataParallel, e.g. torchrun --nproc-per-node 4 "
                   "run_benchmark.py --launcher pytorch ...)")
    s = p.add_argument_group("SLURM (--launcher slurm)")
    s.add_argument("--slurm-partition", help="partition to submit to")
    s.add_argument("--slurm-gpus-per-run", type=int, default=1, help="GPUs per run (default 1; 0 for CPU nodes); "
                   "N > 1 trains each run with N DDP ranks, one task and one GPU each")
    s.add_argument("--slurm-cpus-per-run", type=int, default=8, help="CPU cores per run (per rank with several "
                   "GPUs per run), also its torch threads unless --threads is given (default 8)")
    s.add_argument("--slurm-time", default="12:00:00", help="time limit per run (default 12:00:00); a run stopped "
                   "by it is requeued and resumes from its last epoch")
    s.add_argument("--slurm-array-parallelism", type=int, help="at most this many runs at a time")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="shell line run before each task, e.g. 'module load cuda' (repeatable)")
    s.add_argument("--slurm-param", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other sbatch options, e.g. account=ABC qos=normal mem=64G")
    return p
