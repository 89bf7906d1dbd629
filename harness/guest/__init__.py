"""Other architectures' real JITs: Debian kernels in qemu guests.

``arches`` (one record per architecture), ``setup`` (``jitdiff guest setup``:
kernel, busybox, agent and initramfs from Debian's archive, cached),
``vm`` (one running guest), ``protocol`` (the agent's requests and replies,
built with the host loader's code), ``listing`` (the guest's JIT images
disassembled). The engine is ``harness.engines.guest``.
"""
