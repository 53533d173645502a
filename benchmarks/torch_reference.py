#!/usr/bin/env python
"""Hand-written PyTorch and Pyro references for ``bench_peers.py``: the same NB VAE.

A standalone script that imports only torch, pyro and numpy (no causalzoo), so that it can
run under another interpreter than the package (the CPU torch wheel on this machine is for
Python 3.11, causalzoo needs 3.12). ``bench_peers.py`` starts it as a worker subprocess;
it also runs on its own and prints one JSON object::

    python benchmarks/torch_reference.py --variant eager --cells 20000 --genes 2000 --batch 256
    python benchmarks/torch_reference.py --variant compile --data DIR --batch 1024 --windows 5

The model is the plain VAE of ``bench_engine.py`` / ``bench_peers.py``, written by hand:

* encoder ``log1p(x) -> Linear(G,128) -> LayerNorm -> ReLU -> Linear(128,128) -> LayerNorm
  -> ReLU -> Linear(128, 2k)``, split into ``loc`` and ``softplus(raw) + 1e-4`` (the scale);
* ``z = loc + scale * eps`` (reparameterised Normal, one sample per cell), prior N(0, I);
  the KL term is **analytic** (closed-form Normal-Normal), as NumPyro's
  ``TraceMeanField_ELBO`` (the package's ``AlignedELBO``) computes it for this guide;
* decoder ``z -> 128 -> 128 -> G`` (same block), ``log_softmax`` plus log library size gives
  the NB log mean; gene-wise log inverse dispersion initialised at 2.0; the NB
  log-likelihood is written with ``lgamma`` and ``logaddexp`` as in
  ``causalzoo.blocks.likelihoods``;
* loss ``-(N / B) * sum over the minibatch of (log-likelihood - KL)``, Adam (lr 1e-3,
  PyTorch defaults otherwise), minibatches of ``B`` cells from a fresh permutation each epoch
  (the remainder of an epoch is dropped, as in causalzoo's engine).

Variants: ``eager`` (the loop above), ``compile`` (the loss, forward and backward, through
``torch.compile``; the Adam step eager), ``pyro`` (the same networks and likelihood as a Pyro
model and guide, ``pyro.plate("cells", N, subsample=idx)``, ``TraceMeanField_ELBO`` (analytic
KL), ``pyro.optim.Adam``, argument validation off as in NumPyro), ``scvi`` (scvi-tools'
``SCVI`` trained with its own ``model.train``: Lightning loop and ``AnnDataLoader`` over an
in-memory AnnData of the same counts; ``n_latent=10, n_hidden=128, n_layers=2``,
``gene_likelihood="nb"``, gene-wise dispersion, observed library size, ``use_layer_norm="both"``,
``use_batch_norm="none"``, ``dropout_rate=0``, no KL warm-up, Adam lr 1e-3 with PyTorch's
``eps`` and no weight decay; what still differs from the loop above is scvi-tools' own: the
encoder's variance is ``exp(raw) + 1e-4`` rather than the scale ``softplus(raw) + 1e-4``,
the decoder also computes its zero-inflation head, the inverse dispersion starts at
``exp(N(0, 1))`` rather than ``exp(2)``, and the loss is the mean over the minibatch).
``torch.set_num_threads`` is left at its default unless ``--threads`` is given.

Timing protocol (the same as the JAX workers of ``bench_peers.py``): set-up (build, first
step: the compile time of ``torch.compile``), one untimed warm-up window, then timed windows
of ``--steps`` steps. In ``--worker`` mode the script prints ``@@ {json}`` lines on stdout
("imported", "ready" after a ``setup`` line read from stdin, then one "window" per ``go``
line, "final" on ``stop``) so that the caller can interleave its windows with other stacks'.
scvi-tools drives its own loop, so its windows are cut by a Lightning callback that counts
minibatches and, in worker mode, waits on stdin between windows (outside the timed window).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEARNING_RATE = 1e-3
N_HIDDEN = 128
N_LAYERS = 2


def synthetic_counts(n_cells, n_genes, seed):
    """NB counts (gene log-means N(0, 1.3^2) rescaled to mean 2.6, theta 0.6, LogNormal size
    factors); for standalone runs only: ``bench_peers.py`` passes its own data with --data."""
    rng = np.random.default_rng(seed)
    log_mean = rng.normal(0.0, 1.3, n_genes)
    log_mean += np.log(2.6) - np.log(np.mean(np.exp(log_mean)))
    size = rng.lognormal(0.0, 0.25, n_cells)
    mu = (size / size.mean())[:, None] * np.exp(log_mean)[None]
    return rng.poisson(rng.gamma(0.6, mu / 0.6)).astype(np.float32)


class MLP(nn.Module):
    """``N_LAYERS`` hidden blocks Linear -> LayerNorm -> ReLU, then a linear output."""

    def __init__(self, n_in, n_out, n_hidden=N_HIDDEN, n_layers=N_LAYERS):
        super().__init__()
        widths = [n_in] + [n_hidden] * n_layers
        blocks = []
        for a, b in itertools.pairwise(widths):
            blocks += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        blocks.append(nn.Linear(widths[-1], n_out))
        self.net = nn.Sequential(*blocks)

    def forward(self, h):
        return self.net(h)


def nb_log_prob(x, log_mean, log_theta):
    """NB log-density from the log mean and log inverse dispersion (lgamma form)."""
    theta = torch.exp(log_theta)
    log_theta_mu = torch.logaddexp(log_theta, log_mean)
    return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
            + theta * (log_theta - log_theta_mu) + x * (log_mean - log_theta_mu))


class VAE(nn.Module):
    def __init__(self, n_genes, n_latent):
        super().__init__()
        self.encoder = MLP(n_genes, 2 * n_latent)
        self.decoder = MLP(n_latent, n_genes)
        self.log_theta = nn.Parameter(torch.full((n_genes,), 2.0))

    def encode(self, x):
        loc, raw = self.encoder(torch.log1p(x)).chunk(2, dim=-1)
        return loc, F.softplus(raw) + 1e-4

    def log_mean(self, z, log_library):
        return F.log_softmax(self.decoder(z), dim=-1) + log_library[:, None]


def negative_elbo(vae, x, log_library, n_cells):
    """One-sample negative ELBO of the minibatch, scaled to the whole data set (analytic KL)."""
    loc, scale = vae.encode(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = nb_log_prob(x, vae.log_mean(z, log_library), vae.log_theta).sum(-1)
    kl = (0.5 * (scale * scale + loc * loc - 1.0) - torch.log(scale)).sum(-1)
    return -(n_cells / x.shape[0]) * (log_lik - kl).sum()


def forward_macs_per_cell(module):
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


class Batches:
    """Minibatch indices: a fresh permutation per epoch, the remainder of an epoch dropped."""

    def __init__(self, n_cells, batch, seed):
        self.n, self.b = n_cells, batch
        self.per_epoch = n_cells // batch
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, self.per_epoch

    def __call__(self):
        if self.pos >= self.per_epoch:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos * self.b: (self.pos + 1) * self.b]
        self.pos += 1
        return idx


def build_torch_step(x, log_library, batch, n_latent, compiled, seed):
    torch.manual_seed(seed)
    n_cells, n_genes = x.shape
    vae = VAE(n_genes, n_latent)
    opt = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.compile(negative_elbo) if compiled else negative_elbo
    batches = Batches(n_cells, batch, seed)

    def step():
        idx = batches()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(vae, x.index_select(0, idx), log_library.index_select(0, idx), n_cells)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, forward_macs_per_cell(vae)


def build_pyro_step(x, log_library, batch, n_latent, seed):
    import pyro
    import pyro.distributions as pdist
    from pyro.distributions import constraints
    from pyro.infer import SVI, TraceMeanField_ELBO

    class NBLog(pdist.TorchDistribution):
        """The same NB log-density as the hand-written loop, for Pyro."""

        arg_constraints = {"log_mean": constraints.real, "log_theta": constraints.real}
        support = constraints.nonnegative_integer

        def __init__(self, log_mean, log_theta, validate_args=None):
            self.log_mean, self.log_theta = torch.broadcast_tensors(log_mean, log_theta)
            super().__init__(self.log_mean.shape, validate_args=validate_args)

        def log_prob(self, value):
            return nb_log_prob(value, self.log_mean, self.log_theta)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro.enable_validation(False)
    n_cells, n_genes = x.shape
    encoder, decoder = MLP(n_genes, 2 * n_latent), MLP(n_latent, n_genes)
    zeros, ones = torch.zeros(n_latent), torch.ones(n_latent)

    def model(xb, log_lib, idx):
        pyro.module("decoder", decoder)
        log_theta = pyro.param("log_theta", torch.full((n_genes,), 2.0))
        with pyro.plate("cells", n_cells, subsample=idx):
            z = pyro.sample("z", pdist.Normal(zeros, ones).to_event(1))
            log_mean = F.log_softmax(decoder(z), dim=-1) + log_lib[:, None]
            pyro.sample("x", NBLog(log_mean, log_theta).to_event(1), obs=xb)

    def guide(xb, log_lib, idx):
        pyro.module("encoder", encoder)
        with pyro.plate("cells", n_cells, subsample=idx):
            loc, raw = encoder(torch.log1p(xb)).chunk(2, dim=-1)
            pyro.sample("z", pdist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": LEARNING_RATE}), TraceMeanField_ELBO())
    batches = Batches(n_cells, batch, seed)

    def step():
        idx = batches()
        return svi.step(x.index_select(0, idx), log_library.index_select(0, idx), idx)

    return step, forward_macs_per_cell(encoder) + forward_macs_per_cell(decoder)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(obj, worker):
    line = json.dumps(obj)
    print(f"@@ {line}" if worker else line, flush=True)


def start_worker(args):
    """After the imports: wait for the caller's go (as a worker), set torch's threads and
    load the counts. Returns ``(x_np, t_start)``, or ``None`` when the caller said stop."""
    if args.worker:  # imports are done: let the caller start the set-ups one at a time
        emit({"event": "imported"}, True)
        if sys.stdin.readline().strip() != "setup":
            return None
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.data:
        x_np = np.load(os.path.join(args.data, "x.npy"))
    else:
        x_np = synthetic_counts(args.cells, args.genes, args.seed)
    return x_np, t_start


def run(args):
    if args.variant == "pyro":
        import pyro  # imported here: import time is not set-up time
    started = start_worker(args)
    if started is None:
        return
    x_np, t_start = started
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    log_library = torch.log(x.sum(-1))
    n_cells = x.shape[0]
    args.steps = args.steps or max(1, n_cells // args.batch)
    if args.variant == "pyro":
        step, macs = build_pyro_step(x, log_library, args.batch, args.latent, args.seed)
    else:
        step, macs = build_torch_step(x, log_library, args.batch, args.latent,
                                      args.variant == "compile", args.seed)
    build_s = time.perf_counter() - t_start

    t0 = time.perf_counter()
    loss = step()
    first_step_s = time.perf_counter() - t0

    def window():
        losses = []
        t, c = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            losses.append(step())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        mean_loss = float(np.mean([float(v) for v in losses]))
        return {"event": "window", "seconds": wall, "cpu_seconds": cpu, "steps": args.steps,
                "cells_per_s": args.steps * args.batch / wall, "loss_per_cell": mean_loss / n_cells}

    t0 = time.perf_counter()
    warm = window()
    warmup_s = time.perf_counter() - t0
    ready = {
        "event": "ready", "variant": args.variant, "torch": torch.__version__,
        "python": sys.version.split()[0], "threads": torch.get_num_threads(),
        "build_s": build_s, "first_step_s": first_step_s, "warmup_window_s": warmup_s,
        "first_loss_per_cell": float(loss) / n_cells, "warmup_loss_per_cell": warm["loss_per_cell"],
        "macs_per_cell": macs, "rss_mib": peak_rss_mib(),
    }
    if args.variant == "pyro":
        import pyro
        ready["pyro"] = pyro.__version__
    if args.worker:
        emit(ready, True)
    windows = []
    if args.worker:
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                emit(window(), True)
            elif command == "stop":
                break
    else:
        windows = [window() for _ in range(args.windows)]
    final = {"event": "final", "variant": args.variant, "peak_rss_mib": peak_rss_mib(),
             "total_s": time.perf_counter() - t_start}
    if not args.worker:
        rates = sorted(w["cells_per_s"] for w in windows)
        final.update(ready, event="result", windows=windows,
                     cells_per_s_median=rates[len(rates) // 2] if len(rates) % 2 else
                     0.5 * (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]))
    emit(final, args.worker)


def run_scvi(args):
    """scvi-tools' SCVI through ``model.train``, windows cut by a Lightning callback."""
    import anndata
    import lightning.pytorch as pl
    import scvi

    started = start_worker(args)
    if started is None:
        return
    x_np, t_start = started
    scvi.settings.seed = args.seed
    adata = anndata.AnnData(np.ascontiguousarray(x_np, dtype=np.float32))
    del x_np
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=N_HIDDEN, n_latent=args.latent, n_layers=N_LAYERS,
                            dropout_rate=0.0, dispersion="gene", gene_likelihood="nb",
                            use_layer_norm="both", use_batch_norm="none")
    n_cells = adata.n_obs
    args.steps = args.steps or max(1, n_cells // args.batch)
    module = model.module
    # the multiply-adds of the reference architecture (encoder, decoder to the gene rates);
    # scvi-tools also runs its zero-inflation head, not counted
    counted = [module.z_encoder, module.decoder.px_decoder, module.decoder.px_scale_decoder]
    macs = sum(forward_macs_per_cell(m) for m in counted)
    build_s = time.perf_counter() - t_start
    info = {}
    windows = []
    n_windows = None if args.worker else args.windows

    class Windows(pl.Callback):
        def __init__(self):
            self.n, self.cells, self.losses = 0, 0, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now, cpu = time.perf_counter(), time.process_time()
            self.n += 1
            self.cells += int(batch["X"].shape[0])
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(loss.detach())
            if self.n == 1:
                info.update(first_step_s=now - info["t_train"],
                            first_loss_per_cell=float(loss))
            elif (self.n - 1) % args.steps == 0:
                window = {"event": "window", "seconds": now - self.t_go,
                          "cpu_seconds": cpu - self.c_go, "steps": args.steps,
                          "cells_per_s": self.cells / (now - self.t_go),
                          "loss_per_cell": float(torch.stack(self.losses).mean())}
                if self.n == 1 + args.steps:  # the warm-up window
                    ready = {"event": "ready", "variant": "scvi", "scvi": scvi.__version__,
                             "torch": torch.__version__, "python": sys.version.split()[0],
                             "threads": torch.get_num_threads(), "build_s": build_s,
                             "first_step_s": info["first_step_s"],
                             "warmup_window_s": window["seconds"],
                             "first_loss_per_cell": info["first_loss_per_cell"],
                             "warmup_loss_per_cell": window["loss_per_cell"],
                             "macs_per_cell": macs, "rss_mib": peak_rss_mib()}
                    info["ready"] = ready
                    if args.worker:
                        emit(ready, True)
                else:
                    windows.append(window)
                    if args.worker:
                        emit(window, True)
                if (sys.stdin.readline().strip() != "go" if args.worker
                        else len(windows) >= n_windows):
                    trainer.should_stop = True  # Lightning ends the fit after this batch
                    return
            if self.n == 1 or (self.n - 1) % args.steps == 0:
                self.cells, self.losses = 0, []
                self.t_go, self.c_go = time.perf_counter(), time.process_time()

    n_timed = 10**6 if args.worker else args.windows
    epochs = 2 + n_timed * args.steps // max(1, n_cells // args.batch)
    info["t_train"] = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=args.batch, train_size=1.0,
                accelerator="cpu", devices=1, early_stopping=False,
                datasplitter_kwargs={"drop_last": True}, callbacks=[Windows()],
                plan_kwargs={"lr": LEARNING_RATE, "weight_decay": 0.0, "eps": 1e-8,
                             "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None},
                enable_progress_bar=False, enable_model_summary=False)
    final = {"event": "final", "variant": "scvi", "peak_rss_mib": peak_rss_mib(),
             "total_s": time.perf_counter() - t_start}
    if not args.worker:
        rates = sorted(w["cells_per_s"] for w in windows)
        final.update(info.get("ready", {}), event="result", windows=windows,
                     cells_per_s_median=rates[len(rates) // 2] if len(rates) % 2 else
                     0.5 * (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]))
    emit(final, args.worker)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=["eager", "compile", "pyro", "scvi"], default="eager")
    p.add_argument("--data", default=None, help="folder holding x.npy (float32 cells x genes)")
    p.add_argument("--cells", type=int, default=20000, help="synthetic cells when no --data")
    p.add_argument("--genes", type=int, default=2000, help="synthetic genes when no --data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="steps per window (default: one epoch)")
    p.add_argument("--windows", type=int, default=5, help="timed windows (standalone mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: left at torch's default)")
    p.add_argument("--worker", action="store_true", help="interleaving protocol on stdin/stdout")
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args()
    (run_scvi if _args.variant == "scvi" else run)(_args)
