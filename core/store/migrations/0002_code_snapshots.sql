-- Code shipping: the sha256 of the workdir snapshot taken at submit.
ALTER TABLE jobs ADD COLUMN code_hash VARCHAR;
ALTER TABLE runs ADD COLUMN code_hash VARCHAR;
