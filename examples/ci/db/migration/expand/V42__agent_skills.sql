-- Expand (before the canary): agent-match 1.2.0 reads an agent's skills from
-- their own table instead of the comma-separated agents.skills column. Only
-- additions: 1.1.0, which still reads and writes agents.skills, never sees
-- them. 1.2.0 writes both while both revisions run.
CREATE TABLE IF NOT EXISTS agent_skills (
    agent_id BIGINT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    skill    TEXT   NOT NULL,
    PRIMARY KEY (agent_id, skill)
);

INSERT INTO agent_skills (agent_id, skill)
SELECT a.id, trim(s.skill)
FROM agents a
CROSS JOIN LATERAL unnest(string_to_array(a.skills, ',')) AS s(skill)
WHERE a.skills IS NOT NULL AND trim(s.skill) <> ''
ON CONFLICT DO NOTHING;
