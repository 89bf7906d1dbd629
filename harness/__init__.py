"""jitdiff's machinery, by role:

- ``formats``: the ISA as a table and the text formats (assembly, case files,
  bpf_conformance ``.data``);
- ``system``, ``outcome``, ``errors``: the data model every part shares;
- ``process``: child processes that die with their parent and leave Ctrl-C to it;
- ``reference``: the reference interpreter, its semantic profile, helper models;
- ``jit`` (model JITs), ``kernel`` (the host kernel's bpf() layer) and
  ``native`` (images and the Unicorn executor): native execution;
- ``engines``: one small interface, one module per engine;
- ``guest``: other architectures' kernels in qemu guests (set-up, agent protocol);
- ``campaign``: the differential step, fuzzing, shrinking, mutants, bench;
- ``report``: divergences as corpus cases, model-vs-kernel fidelity.

Entry point: ``cli``. Nothing here knows pytest."""

__all__ = [
    "campaign", "cli", "engines", "errors", "formats", "guest", "jit", "kernel", "native",
    "outcome", "process", "reference", "report", "system",
]  # fmt: skip
