/* Shared by every public header. */
#ifndef SWITCHBOARD_COMMON_H
#define SWITCHBOARD_COMMON_H

/* Symbols are hidden by default (-fvisibility=hidden); the public API is marked. */
#define SB_EXPORT __attribute__((visibility("default")))

#endif
