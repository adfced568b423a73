-- Every Synapse user. `skip` names why a row is not migrated (NULL: migrated).
SELECT u.name,
       u.password_hash,
       u.creation_ts,
       u.admin <> 0       AS admin,
       u.deactivated <> 0 AS deactivated,
       u.locked,
       u.is_guest <> 0    AS is_guest,
       CASE WHEN u.appservice_id IS NOT NULL THEN 'appservice' END AS skip
  FROM users u
