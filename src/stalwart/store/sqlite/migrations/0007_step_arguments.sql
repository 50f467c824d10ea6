-- 0007_step_arguments: the arguments each attempt of a step runs with (decision 0037).
--
-- steps.args: the step's `spec.args` with every reference resolved, as JSON, written by the
-- claim that starts an attempt (and when the step parks for approval: what it will run with).
-- Every attempt of one step row resolves to the same value (its inputs never change once
-- written), so one column holds every attempt's arguments. NULL until the step is first
-- claimed, and for rows written before this migration.
ALTER TABLE steps ADD COLUMN args TEXT;
