/*
 * Switchboard error codes.
 *
 * Every fallible function in libswitchboard returns 0 (or a non-negative count) on success
 * and one of the negative SB_E* codes below on failure, in the style of libuv. The values
 * are negated errno numbers so that system call failures pass through unchanged.
 */
#ifndef SWITCHBOARD_ERROR_H
#define SWITCHBOARD_ERROR_H

#include <errno.h>

#include "switchboard/common.h"

#define SB_OK          0
#define SB_ENOMEM      (-ENOMEM)    /* allocation failed */
#define SB_EINVAL      (-EINVAL)    /* invalid argument or malformed input */
#define SB_EAGAIN      (-EAGAIN)    /* incomplete input, or a bounded queue is full: try again */
#define SB_EPROTO      (-EPROTO)    /* peer violated the protocol */
#define SB_EMSGSIZE    (-EMSGSIZE)  /* input exceeds a configured limit */
#define SB_ENOENT      (-ENOENT)    /* no such file or object */
#define SB_EEXIST      (-EEXIST)    /* object already exists */
#define SB_EIO         (-EIO)       /* I/O error */
#define SB_ENOTSUP     (-ENOTSUP)   /* feature not supported */
#define SB_ERANGE      (-ERANGE)    /* value out of range */
#define SB_ETIMEDOUT   (-ETIMEDOUT) /* a deadline passed */
#define SB_ECANCELED   (-ECANCELED) /* operation cancelled (shutdown) */
#define SB_EBUSY       (-EBUSY)     /* resource locked by another user; try later */
#define SB_EACCES      (-EACCES)    /* not permitted (a grant or scope is missing) */
#define SB_ETLS        (-4001)      /* TLS library error; details are logged */
#define SB_ECONFIG     (-4002)      /* invalid configuration */
#define SB_EAUTH       (-4003)      /* credential refused (bad, expired or forged token) */
#define SB_ECONSTRAINT (-4004)      /* a stored row would break a constraint (not uniqueness) */

#ifdef __cplusplus
extern "C" {
#endif

/* A static, human-readable description of an SB_E* code. Never NULL. */
SB_EXPORT const char *sb_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif
