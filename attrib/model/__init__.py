"""Model attribution: which model made an image (fingerprints of synthesized models, enrolment, unknown detection)."""
