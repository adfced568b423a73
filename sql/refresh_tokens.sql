-- Every refresh token with the access token it produced. A pair is dropped when it was
-- refreshed and its successor's access token has been used (the client moved on); if the
-- successor was never used, both the old and the new pair stay valid, as in Synapse.
WITH
#include session_times.sql
SELECT r.id AS rt_id,
       r.user_id,
       r.device_id,
       r.token AS rt_token,
       a.id AS at_id,
       a.token AS at_token,
       a.valid_until_ms,
       a.last_validated,
       u.creation_ts AS user_creation_ts,
       s.session_ms,
       CASE WHEN a.id IS NULL                                      THEN 'no_access_token'
            WHEN a.user_id <> r.user_id
              OR a.device_id IS DISTINCT FROM r.device_id          THEN 'inconsistent_pair'
            WHEN d.device_id IS NULL                               THEN 'device_deleted'
            WHEN EXISTS (SELECT 1 FROM access_tokens nx
                          WHERE nx.refresh_token_id = r.next_token_id AND nx.used)
                                                                   THEN 'superseded'
            WHEN u.name IS NULL                                    THEN 'orphan'
            WHEN u.appservice_id IS NOT NULL                       THEN 'appservice'
            WHEN u.deactivated <> 0                                THEN 'deactivated'
            WHEN u.is_guest <> 0                                   THEN 'guest'
            WHEN d.hidden IS NOT FALSE OR d.device_id = 'guest_device'
                                                                   THEN 'device_hidden'
       END AS skip
  FROM refresh_tokens r
  LEFT JOIN access_tokens a ON a.refresh_token_id = r.id
  LEFT JOIN users u   ON u.name = r.user_id
  LEFT JOIN devices d ON d.user_id = r.user_id AND d.device_id = r.device_id
  LEFT JOIN sess s    ON s.user_id = r.user_id AND s.device_id = r.device_id
