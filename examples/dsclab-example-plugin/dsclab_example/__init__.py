"""An example dsclab plugin: a data family and a study kind, added from outside dsclab through
entry points (``pyproject.toml``), without editing dsclab.

* ``uniform`` (group ``dsclab.distributions``): the uniform law on the cube [-a, a]^d, whose
  forward law q_t has a closed form (:mod:`dsclab_example.uniform`);
* ``denoiser_gap`` (group ``dsclab.studies``): the MSE of the exact (Tweedie) denoiser against the
  best linear one, per (data law, d, seed) and OU time (:mod:`dsclab_example.denoiser_gap`).

This module imports nothing: dsclab imports the entry points' modules on the first lookup in its
registries, and a plugin module must not look a registry up while it is imported.
"""
