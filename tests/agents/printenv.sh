#!/bin/sh
# Prints its whole environment, one variable per line.
env
