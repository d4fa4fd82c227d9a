-- The purpose a segment is for (marketing_sms, marketing_email, push, profiling): when set, only
-- customers who consent to it are members. NULL: no purpose.
ALTER TABLE segments ADD COLUMN purpose TEXT;
