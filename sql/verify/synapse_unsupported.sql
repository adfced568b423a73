-- What MAS `user_unsupported_third_party_ids` must hold: every third-party id that is not an
-- email (phone numbers…).
SELECT *
  FROM (SELECT LOCALPART(q.user_id) AS username,
               q.medium,
               q.address,
               q.added_at::int8     AS created_at,
               q.skip
          FROM (
#source threepids
               ) q
       #params
         WHERE q.medium <> 'email'
       ) v
 ORDER BY v.username COLLATE "C" NULLS FIRST, v.medium COLLATE "C" NULLS FIRST,
          v.address COLLATE "C" NULLS FIRST, v.skip IS NOT NULL
