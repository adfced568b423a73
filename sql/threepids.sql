-- Every third-party id, with what the transform needs of its owner.
SELECT t.user_id,
       t.medium,
       t.address,
       t.added_at,
       u.creation_ts AS user_creation_ts,
       CASE WHEN u.name IS NULL                THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL   THEN 'appservice'
       END AS skip
  FROM user_threepids t
  LEFT JOIN users u ON u.name = t.user_id
