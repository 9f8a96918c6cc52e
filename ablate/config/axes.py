"""Every design axis, registered: importing this module imports each module that declares one.

The model's axes live in the package `components` (norm, norm_pos, ffn, block, pos, attn, qk_norm,
softcap, z_loss, moe), the training side's in ablate (data, tokenizer, optim, schedule, logger).
The composed config (ablate.config.schema) has one field per registered axis, so it imports this module
before assembling; the model and the components never do, and so never import the data pipeline,
the optimizers or the loggers.
"""
import components  # noqa: F401,I001  (the model's axes first: the order of a composed config)
import ablate.data.corpora  # noqa: F401  (registers data)
import ablate.data.tokenizers  # noqa: F401  (registers tokenizer)
import ablate.training.optimizers  # noqa: F401  (registers optim)
import ablate.training.schedules  # noqa: F401  (registers schedule)
import ablate.training.loggers  # noqa: F401  (registers logger)
