"""Training a DiffSketch generator from one example: the generator network (:mod:`.generator`),
its losses (:mod:`.losses`), CDST text conditions (:mod:`.conditions`), the training loop
(:mod:`.trainer`) and its resumable state files (:mod:`.state`), and running a trained generator
(:mod:`.inference`)."""
