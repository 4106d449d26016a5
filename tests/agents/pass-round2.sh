#!/bin/sh
# An evaluator agent: passes the result of round 2, fails anything else with feedback.
if grep -q "generated round 2" ; then echo "PASS"; echo "good enough"; else echo "FAIL"; echo "not there yet: do more"; fi
