-- 0009_agent_functions: on PostgreSQL, the two transactions of an agent turn run in the server
-- (decision 0040). SQLite runs them as statements on its own connection: nothing to add here.
SELECT 1;
