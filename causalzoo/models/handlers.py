"""``do`` and ``condition`` that refuse a site the program does not have.

NumPyro's :class:`numpyro.handlers.do` and :class:`numpyro.handlers.condition` skip every key
of ``data`` that names no sample site of the run: a misspelt name (``"z_res"`` for
``"z_resp"``), a deterministic or param site, or a site that exists only under an option of
the model (the dynamical entry's ``"weight_shift"`` exists only with ``weight_shift_scale``)
leaves the program unchanged, and nothing says so. The handlers here are NumPyro's (they
subclass them, so a run with the right names gives the same trace, value for value, and they
compose, nest, run under ``seed``, ``trace``, ``Predictive``, SVI and ``jax.jit``, and work as
context managers and decorators the same way), plus a check at the end of each run of the
wrapped program: every key of ``data`` must have been a sample site of that run, or a
:class:`causalzoo.CausalZooError` names the key, says what the site is if the run has it under
another type, lists the run's sample sites with a close match, and says what to do.

The check records the messages that reach the handler while the program runs (no second
evaluation of the model); under ``jax.jit`` it runs while JAX traces the program. A site
hidden from the handler by an inner :class:`numpyro.handlers.block` is, for the handler, not
a site of the run (NumPyro's handler would not reach it either).

More refusals, where NumPyro's handler would silently do something other than asked:

- ``condition`` with ``None`` as a value: NumPyro takes it as "no value" and leaves the site
  unobserved (refused when the handler is built).
- ``condition`` on a site that is observed already (the program passed ``obs=`` for it, or an
  inner ``condition`` fixed it): NumPyro replaces the observed value. Pass one value only.
- ``do`` on a sample site inside :func:`numpyro.contrib.control_flow.scan`: NumPyro's ``do``
  does not reach into ``scan``, so the intervened value would not propagate to the later
  steps or to the sites that depend on it (``condition`` does reach into ``scan`` and is
  allowed there). The zoo's dynamical entry runs its recursion inside one distribution, not
  with ``scan``: its sites are all reachable.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from numpyro import handlers as _numpyro_handlers

from .._errors import CausalZooError

__all__ = ["condition", "do"]


class _Run:
    """What one run of the wrapped program showed the handler."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}  # site name -> its first type ("sample", "param", ...)
        self.observed_before: set[str] = set()  # keys of data already observed when met
        self.in_scan: set[str] = set()  # keys of data met as sample sites inside scan


class _StrictMixin:
    """The record and the check; mixed in before a NumPyro handler class."""

    _handler_name = ""

    def _strict_init(self) -> None:
        # a stack, so that a re-entrant call of the same handler keeps its own record
        self._runs: list[_Run] = []

    def __enter__(self):
        self._runs.append(_Run())
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        run = self._runs.pop() if self._runs else None
        if exc_type is None and run is not None and self.data is not None:
            self._check(run)

    def _record(self, msg) -> None:
        if not self._runs:
            return
        run, name = self._runs[-1], msg.get("name")
        if name is None or msg["type"] in ("control_flow", "plate_stack"):
            return
        if msg["type"] != "sample":
            run.types.setdefault(name, msg["type"])
            return
        # a sample site wins over an earlier site of another type with its name
        run.types[name] = "sample"
        if self.data is not None and name in self.data:
            if msg.get("_control_flow_done", False):
                run.in_scan.add(name)
            elif msg.get("is_observed", False):
                run.observed_before.add(name)

    def _program_name(self) -> str:
        name = getattr(self.fn, "__name__", None)
        return f"the program {name!r}" if name else "the program"

    def _check(self, run: _Run) -> None:
        samples = sorted(n for n, t in run.types.items() if t == "sample")
        problems = []
        for key in self.data:
            site_type = run.types.get(key)
            if site_type is None:
                close = difflib.get_close_matches(str(key), samples, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{key!r} is not a site of this run{hint}")
            elif site_type != "sample":
                fix = {
                    "deterministic": "set the sample sites it is computed from instead",
                    "param": "fix a param with numpyro.handlers.substitute(model, "
                    "{name: value}) instead",
                }.get(site_type, "name a sample site instead")
                problems.append(
                    f"{key!r} is a {site_type} site, not a sample site, which "
                    f"{self._handler_name} ignores: {fix}"
                )
        advice = ""
        if problems:
            advice = (
                " Fix the name(s) in data, or drop the key(s); a site that exists only under "
                "an option of the model (e.g. the dynamical entry's 'weight_shift', only with "
                "weight_shift_scale set) needs the model built with that option. To list a "
                "program's sites, trace it once: numpyro.handlers.trace("
                "numpyro.handlers.seed(model, 0)).get_trace(...)."
            )
        problems.extend(self._extra_problems(run))
        if not problems:
            return
        listed = ", ".join(repr(n) for n in samples) if samples else "none"
        raise CausalZooError(
            f"cz.models.{self._handler_name} on {self._program_name()}: "
            + "; ".join(problems)
            + f". The sample sites of this run are: {listed}.{advice}"
        )

    def _extra_problems(self, run: _Run) -> list[str]:
        return []


def _check_data(handler: str, data, *, allow_none: bool) -> None:
    if data is None and allow_none:
        return
    if callable(data) and not isinstance(data, Mapping):
        fix = (
            "pass a function of the site as condition_fn=... instead (that form is not "
            "checked: it names no sites)"
            if handler == "condition"
            else "NumPyro's do takes a dict only: pass {site name: value}"
        )
        raise CausalZooError(f"cz.models.{handler}: data is a callable, {data!r}; {fix}.")
    if not isinstance(data, Mapping):
        raise CausalZooError(
            f"cz.models.{handler}: data must be a dict {{site name: value}}; got "
            f"{type(data).__name__}. Pass e.g. {{'z_resp': value}}."
        )


class do(_StrictMixin, _numpyro_handlers.do):
    """NumPyro's :class:`numpyro.handlers.do` that refuses a key naming no sample site.

    Same signature and semantics as NumPyro's handler (single-world intervention: downstream
    sites see the value; the trace keeps a fresh, unused sample under the original name), and
    usable wherever it is: around a model, nested with other handlers, under ``seed``,
    ``trace``, ``Predictive``, SVI and ``jax.jit``, as a context manager or a decorator. After
    each run of the wrapped program, a key of ``data`` that was not a sample site of that run
    (misspelt, a deterministic or param site, or a site that exists only under an option of
    the model) raises :class:`causalzoo.CausalZooError`, naming the key and the program's
    sample sites. A key naming a sample site inside
    :func:`numpyro.contrib.control_flow.scan` is refused too: NumPyro's ``do`` does not reach
    into ``scan``, so the value would not propagate.

    Parameters
    ----------
    fn : callable, optional
        The program (a NumPyro model); leave out to use the handler as a context manager.
    data : dict
        ``{sample site name: value}``, the interventions.

    Raises
    ------
    CausalZooError
        At the end of a run, for a key that was not a sample site of it or that names a site
        inside ``scan``; at construction, when ``data`` is not a dict.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.handlers import seed
    >>> import causalzoo as cz
    >>> def model():
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     return numpyro.sample("x", dist.Normal(z, 0.1))
    >>> float(seed(cz.models.do(model, {"z": 5.0}), 0)()) > 4.0
    True
    >>> seed(cz.models.do(model, {"zz": 5.0}), 0)()
    Traceback (most recent call last):
    ...
    causalzoo._errors.CausalZooError: cz.models.do on the program 'model': 'zz' is not a site \
of this run (did you mean 'z'?). The sample sites of this run are: 'x', 'z'. ...
    """

    _handler_name = "do"

    def __init__(self, fn: Callable | None = None, data: Mapping[str, Any] | None = None):
        _check_data("do", data, allow_none=True)
        self._strict_init()
        super().__init__(fn, data)

    def process_message(self, msg) -> None:
        self._record(msg)
        if msg.get("_control_flow_done", False) and self.data and msg.get("name") in self.data:
            # NumPyro's do would split the replayed site after scan has used its value:
            # leave it alone (the run is refused at its end)
            return
        super().process_message(msg)

    def _extra_problems(self, run: _Run) -> list[str]:
        return [
            f"{key!r} is a sample site inside numpyro.contrib.control_flow.scan, which "
            "NumPyro's do does not reach into (the value would not propagate to later steps "
            "or dependent sites): intervene on a site outside the scan, or write the loop "
            "without scan"
            for key in sorted(run.in_scan)
        ]


class condition(_StrictMixin, _numpyro_handlers.condition):
    """NumPyro's :class:`numpyro.handlers.condition` that refuses a key naming no sample site.

    Same signature and semantics as NumPyro's handler (the sites take the given values and
    become observed), and usable wherever it is: around a model, nested with other handlers,
    under ``seed``, ``trace``, ``Predictive``, SVI and ``jax.jit``, as a context manager or a
    decorator. After each run of the wrapped program, a key of ``data`` that was not a sample
    site of that run (misspelt, a deterministic or param site, or a site that exists only
    under an option of the model) raises :class:`causalzoo.CausalZooError`, naming the key and
    the program's sample sites. A key naming a site that is observed already (the program
    passed ``obs=`` for it, or an inner ``condition`` fixed it) is refused too: NumPyro would
    silently replace the observed value. Inside :func:`numpyro.contrib.control_flow.scan` the
    names are checked but an observed site is not detected (``scan`` applies the condition
    itself).

    With ``condition_fn`` (a function of the site message returning a value or ``None``, as
    in NumPyro) there are no names to check: the handler then behaves exactly as NumPyro's.

    Parameters
    ----------
    fn : callable, optional
        The program (a NumPyro model); leave out to use the handler as a context manager.
    data : dict, optional
        ``{sample site name: value}``, the observations.
    condition_fn : callable, optional
        Instead of ``data``: NumPyro's function form (not checked).

    Raises
    ------
    CausalZooError
        At the end of a run, for a key that was not a sample site of it or whose site was
        observed already; at construction, when ``data`` is not a dict (a callable belongs in
        ``condition_fn``) or has a ``None`` value (NumPyro's condition skips those).

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.handlers import seed, trace
    >>> import causalzoo as cz
    >>> def model():
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     numpyro.deterministic("z2", z**2)
    ...     return numpyro.sample("x", dist.Normal(z, 0.1))
    >>> tr = trace(seed(cz.models.condition(model, {"z": 2.0}), 0)).get_trace()
    >>> float(tr["z"]["value"]), bool(tr["z"]["is_observed"])
    (2.0, True)
    >>> seed(cz.models.condition(model, {"z2": 4.0}), 0)()
    Traceback (most recent call last):
    ...
    causalzoo._errors.CausalZooError: cz.models.condition on the program 'model': 'z2' is a \
deterministic site, not a sample site, which condition ignores: ...
    """

    _handler_name = "condition"

    def __init__(
        self,
        fn: Callable | None = None,
        data: Mapping[str, Any] | None = None,
        condition_fn: Callable | None = None,
    ):
        if data is not None and condition_fn is not None:
            raise CausalZooError(
                "cz.models.condition: got both data and condition_fn; pass one of them."
            )
        _check_data("condition", data, allow_none=condition_fn is not None)
        empty = sorted(str(key) for key, value in (data or {}).items() if value is None)
        if empty:
            raise CausalZooError(
                f"cz.models.condition: data has None for {', '.join(map(repr, empty))}, which "
                "NumPyro's condition takes as 'no value': the site would stay unobserved. "
                "Give a value, or drop the key (e.g. {k: v for k, v in data.items() if v is "
                "not None})."
            )
        self._strict_init()
        super().__init__(fn, data, condition_fn)

    def process_message(self, msg) -> None:
        self._record(msg)
        super().process_message(msg)

    def _extra_problems(self, run: _Run) -> list[str]:
        return [
            f"{key!r} is observed already (the program passes obs= for it, or an inner "
            "condition fixes it), and conditioning would silently replace that value: "
            "pass one value only (drop the key, or call the model without the observation)"
            for key in sorted(run.observed_before)
        ]
