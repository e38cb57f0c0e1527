"""The embedded KMS served over HTTP in the AWS KMS JSON protocol (`envelope serve`)."""
