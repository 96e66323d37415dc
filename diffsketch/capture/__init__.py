"""Feature capture: which layers of a Stable Diffusion model DiffSketch taps (:mod:`.spec`), the hooks that
record them (:mod:`.hooks`), one captured sample (:mod:`.sample`), the DDIM timestep grid
(:mod:`.timesteps`) and the representative-timestep analysis (:mod:`.analysis`)."""
