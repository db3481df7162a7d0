"""Companion package of the hands-on book on deep generative models.

Conventions shared by every chapter (DESIGN.md, section 3):

* **Time.** ``t`` lies in [0, 1]; **t = 0 is data, t = 1 is noise**. Samplers integrate from
  t = 1 down to t = 0. A source that uses the other direction is mapped in its note.
* **Networks** that depend on time are called as ``net(x, t, **cond)`` with ``t`` of shape (B,).
* **Samplers** are plain functions ``sampler(model, x, ts, *, callback=None, **cond) -> x``; the
  callback receives every step.
* **Objectives** live outside the networks: ``loss(model, batch) -> scalar``.
* **Flows** map data to latent: ``forward(x) -> (z, logabsdet)`` and ``inverse(z) -> x``.
* **Likelihoods** are ``log_prob(x) -> (B,)`` in nats; bits per dimension come from
  :func:`nbutils.metrics.bits_per_dim`.
* **Images** are stored as uint8 (N, 28, 28); models see float (B, 1, 28, 28) in [0, 1]
  (likelihood chapters) or [-1, 1] (diffusion and flow-matching chapters).
* **Devices and dtypes** are taken from the inputs; the library never calls ``.cuda()``.

Where things are: shared pieces at the bottom (:mod:`~nbutils.runtime`, :mod:`~nbutils.tensors`,
:mod:`~nbutils.checkpoint`, :mod:`~nbutils.train`, :mod:`nbutils.data`, :mod:`nbutils.nn`,
:mod:`~nbutils.paths`, :mod:`~nbutils.analytic`, :mod:`~nbutils.samplers`,
:mod:`~nbutils.metrics`), one room per model family above them (chapter 01's
:mod:`~nbutils.autoregressive`, :mod:`~nbutils.made`, :mod:`~nbutils.pixelcnn` and
:mod:`~nbutils.joint`;
:mod:`nbutils.flows`; :mod:`~nbutils.rectified`), which never import one another, and the
tools (:mod:`~nbutils.classifier`, :mod:`~nbutils.plot`, :mod:`~nbutils.report`,
:mod:`~nbutils.run`, :mod:`~nbutils.results`).

Run profiles (``NBUTILS_PROFILE``): ``smoke`` (tests, about a minute on 2 CPU cores), ``cpu``
(about four minutes, recognisable results) and ``gpu`` (about five minutes on one H100, the
chapter's target numbers). See :mod:`nbutils.runtime`.
"""

from nbutils.runtime import device, pick, profile, seed_everything

__version__ = "0.1.0"

__all__ = ["device", "pick", "profile", "seed_everything", "__version__"]
