"""Key-management backends behind one Protocol (`envelope.kms.base.KmsBackend`)."""
