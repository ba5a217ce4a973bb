"""Plan, schema, batches and errors: the layer everything else imports."""
