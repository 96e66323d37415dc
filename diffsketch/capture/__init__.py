"""Feature capture: which layers of an SD 1.x model DiffSketch taps (:mod:`.spec`), the hooks that
record them (:mod:`.hooks`), one captured sample (:mod:`.sample`), the DDIM timestep grid
(:mod:`.timesteps`) and the representative-timestep analysis (:mod:`.analysis`)."""
