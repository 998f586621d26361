-- Contract (after `veer wait` exited 0 and the stable workload runs 1.2.0):
-- no running revision reads agents.skills any more. Run earlier, it would
-- break 1.1.0 while it still serves, and a rollback to it.
ALTER TABLE agents DROP COLUMN IF EXISTS skills;
