-- A deployment's code sent by its applier (docs/team.md, "Design: code upload"): a revision applied through
-- another user's client names the snapshot it sent ({"sha256", "files", "skipped", "lineage"}) and who sent it;
-- every replica of that revision (scale-ups, rollbacks to it) runs that archive, and the controller never reads
-- the workdir. NULL: the controller's own user applied it, and replicas are packed from the workdir as before.
ALTER TABLE deploy_revisions ADD COLUMN code JSON;
ALTER TABLE deploy_revisions ADD COLUMN code_by VARCHAR;
