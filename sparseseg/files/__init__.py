"""Safe file writing shared by every stage: writer locks and staged (atomic) outputs."""
