# Seconds since the epoch as an RFC 3339 UTC timestamp ("2026-08-03T18:38:27Z"),
# for image metadata that must carry the commit time rather than the build
# time. Uses the days-to-civil-date conversion of the proleptic Gregorian
# calendar; only non-negative times occur here.
epoch:
let
  pad = width: n: let s = toString n; in if builtins.stringLength s >= width then s else pad width "0${s}";
  days = epoch / 86400;
  secondsOfDay = epoch - days * 86400;

  z = days + 719468;
  era = z / 146097;
  dayOfEra = z - era * 146097;
  yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146096) / 365;
  dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100);
  monthIndex = (5 * dayOfYear + 2) / 153;
  day = dayOfYear - (153 * monthIndex + 2) / 5 + 1;
  month = if monthIndex < 10 then monthIndex + 3 else monthIndex - 9;
  year = yearOfEra + era * 400 + (if month <= 2 then 1 else 0);
in
"${toString year}-${pad 2 month}-${pad 2 day}T${pad 2 (secondsOfDay / 3600)}:${pad 2 (secondsOfDay / 60 - secondsOfDay / 3600 * 60)}:${pad 2 (secondsOfDay - secondsOfDay / 60 * 60)}Z"
