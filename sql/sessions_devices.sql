-- Devices and tokens, read 2 of 3: every device as stored. Hidden rows are cross-signing
-- keys, not devices; `guest_device` is what Synapse registers for guests (as devices.sql).
SELECT d.user_id,
       d.device_id,
       d.display_name,
       d.last_seen,
       d.ip,
       d.user_agent,
       CASE WHEN d.hidden IS NOT FALSE          THEN 'hidden'
            WHEN d.device_id = 'guest_device'   THEN 'guest_device'
       END                                      AS device_skip
  FROM devices d
