#include "switchboard/error.h"

#include <string.h>

const char *sb_strerror(int err)
{
    switch (err) {
    case SB_OK:
        return "success";
    case SB_ETLS:
        return "TLS error";
    case SB_ECONFIG:
        return "invalid configuration";
    case SB_EAUTH:
        return "authentication failed";
    case SB_ECONSTRAINT:
        return "constraint violation";
    default:
        break;
    }
    if (err < 0 && err > -4000)
        return strerror(-err);
    return "unknown error";
}
