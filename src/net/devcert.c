#include "switchboard/devcert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/alloc.h"
#include "switchboard/error.h"

#define CA_DAYS     3650
#define SERVER_DAYS 825
#define RENEW_DAYS  30
#define PEM_MAX     (64 * 1024) /* larger files are not ours: treated as broken */

typedef struct ext_spec {
    int nid;
    const char *value;
} ext_spec;

/* SKID must precede AKID: for the self-signed CA, AKID copies the SKID just added. */
static const ext_spec ca_exts[] = {
    {NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
    {NID_key_usage, "critical,keyCertSign,cRLSign"},
    {NID_subject_key_identifier, "hash"},
    {NID_authority_key_identifier, "keyid:always"},
};

static const ext_spec server_exts[] = {
    {NID_basic_constraints, "critical,CA:FALSE"},
    {NID_key_usage, "critical,digitalSignature"},
    {NID_ext_key_usage, "serverAuth"},
    {NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1"},
    {NID_subject_key_identifier, "hash"},
    {NID_authority_key_identifier, "keyid:always"},
};

typedef struct devcert {
    char *tls_dir;
    char *ca_pem;
    char *ca_key;
    char *srv_pem;
    char *srv_key;
    int dir_fd;
    char *err;
    size_t errlen;
} devcert;

__attribute__((format(printf, 2, 3))) static void set_err(devcert *d, const char *fmt, ...)
{
    if (!d->err || d->errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, d->errlen, fmt, ap);
    va_end(ap);
}

static int sys_fail(devcert *d, const char *path, const char *what, int errnum)
{
    set_err(d, "%s: %s: %s", path, what, strerror(errnum));
    return errnum > 0 ? -errnum : SB_EIO;
}

/* Reports the oldest queued OpenSSL error, which is usually the root cause. */
static int tls_fail(devcert *d, const char *path, const char *what)
{
    char reason[256] = "no OpenSSL error queued";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    set_err(d, "%s: %s: %s", path, what, reason);
    return SB_ETLS;
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = sb_malloc(a + 1 + b + 1);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int ensure_dir(devcert *d, const char *path)
{
    if (mkdir(path, 0700) == 0)
        return 0;
    if (errno != EEXIST)
        return sys_fail(d, path, "cannot create directory", errno);
    struct stat st;
    if (stat(path, &st) != 0)
        return sys_fail(d, path, "cannot stat", errno);
    if (!S_ISDIR(st.st_mode))
        return sys_fail(d, path, "exists but is not a directory", ENOTDIR);
    return 0;
}

/* Never prompt on a terminal for an encrypted key: such a key is simply not usable here. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/*
 * Loads the first PEM object of path. Returns 1 when loaded, 0 when the file is missing or
 * does not hold a usable object (the caller regenerates it), or a negative SB_E* code when the
 * file exists but cannot be read, which must not be mistaken for "missing".
 */
static int load_pem(devcert *d, const char *path, bool is_key, void **out)
{
    int rc = 0;
    char *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    struct stat st;

    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? 0 : sys_fail(d, path, "cannot open", errno);
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        rc = sys_fail(d, path, "cannot stat", errno);
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > PEM_MAX)
        goto close_fd;
    buf = sb_malloc((size_t)st.st_size);
    if (!buf) {
        set_err(d, "%s: out of memory", path);
        rc = SB_ENOMEM;
        goto close_fd;
    }
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = sys_fail(d, path, "cannot read", errno);
            goto free_buf;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    bio = BIO_new_mem_buf(buf, (int)len);
    if (!bio) {
        rc = tls_fail(d, path, "cannot allocate BIO");
        goto free_buf;
    }
    if (is_key)
        *out = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    else
        *out = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
    rc = *out != NULL;
    ERR_clear_error();
    BIO_free(bio);
free_buf:
    OPENSSL_cleanse(buf, len);
    sb_free(buf);
close_fd:
    close(fd);
out:
    return rc;
}

static int load_cert(devcert *d, const char *path, X509 **out)
{
    void *p;
    int rc = load_pem(d, path, false, &p);
    *out = p;
    return rc;
}

static int load_key(devcert *d, const char *path, EVP_PKEY **out)
{
    void *p;
    int rc = load_pem(d, path, true, &p);
    *out = p;
    return rc;
}

/* Writes len bytes to path via a temp file in the same directory, fsync and rename. */
static int write_atomic(devcert *d, const char *path, mode_t mode, const char *data, size_t len)
{
    static const char suffix[] = ".tmp.XXXXXX";
    int rc = 0;
    size_t plen = strlen(path);
    char *tmp = sb_malloc(plen + sizeof suffix);
    if (!tmp) {
        set_err(d, "%s: out of memory", path);
        return SB_ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);

    int fd = mkostemp(tmp, O_CLOEXEC); /* created 0600 */
    if (fd < 0) {
        rc = sys_fail(d, path, "cannot create temporary file", errno);
        goto free_tmp;
    }
    if (mode != 0600 && fchmod(fd, mode) != 0) {
        rc = sys_fail(d, tmp, "cannot chmod", errno);
        goto unlink_tmp;
    }
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = sys_fail(d, tmp, "cannot write", errno);
            goto unlink_tmp;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0) {
        rc = sys_fail(d, tmp, "cannot fsync", errno);
        goto unlink_tmp;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = sys_fail(d, tmp, "cannot close", errno);
        goto unlink_tmp;
    }
    if (rename(tmp, path) != 0) {
        rc = sys_fail(d, path, "cannot rename temporary file into place", errno);
        goto unlink_tmp;
    }
    if (fsync(d->dir_fd) != 0 && errno != EINVAL)
        rc = sys_fail(d, d->tls_dir, "cannot fsync directory", errno);
    goto free_tmp;

unlink_tmp:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
free_tmp:
    sb_free(tmp);
    return rc;
}

static int write_pem(devcert *d, const char *path, X509 *cert, EVP_PKEY *key)
{
    int rc;
    char *data;
    /* Key PEM goes through secure-heap memory that is wiped when freed. */
    BIO *bio = BIO_new(key ? BIO_s_secmem() : BIO_s_mem());
    if (!bio)
        return tls_fail(d, path, "cannot allocate BIO");
    int ok = key ? PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)
                 : PEM_write_bio_X509(bio, cert);
    long len = BIO_get_mem_data(bio, &data);
    if (!ok || len <= 0) {
        rc = tls_fail(d, path, key ? "cannot encode private key" : "cannot encode certificate");
        goto free_bio;
    }
    rc = write_atomic(d, path, key ? 0600 : 0644, data, (size_t)len);
free_bio:
    BIO_free(bio);
    return rc;
}

static EVP_PKEY *gen_key(void)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* Builds and signs a certificate; issuer == NULL makes it self-signed. NULL on failure with
 * the reason on the OpenSSL error queue. */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, long days,
                       const ext_spec *exts, size_t nexts)
{
    time_t now = time(NULL);
    X509V3_CTX ctx;
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *serial = BN_new();
    if (!x || !name || !serial)
        goto fail;
    if (!X509_set_version(x, X509_VERSION_3) ||
        !BN_rand(serial, 159, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)))
        goto fail;
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_subject_name(x, name) ||
        !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name))
        goto fail;
    /* notBefore is not backdated: 825 days is the most some clients (Apple) accept. */
    if (!X509_time_adj_ex(X509_getm_notBefore(x), 0, 0, &now) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), (int)days, 0, &now))
        goto fail;
    if (!X509_set_pubkey(x, key))
        goto fail;
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    for (size_t i = 0; i < nexts; i++) {
        X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, exts[i].nid, exts[i].value);
        if (!ext)
            goto fail;
        int ok = X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        if (!ok)
            goto fail;
    }
    if (X509_sign(x, issuer_key, EVP_sha256()) <= 0)
        goto fail;
    BN_free(serial);
    X509_NAME_free(name);
    return x;

fail:
    BN_free(serial);
    X509_NAME_free(name);
    X509_free(x);
    return NULL;
}

/* Sets *verr to X509_V_OK when srv chains to ca for TLS server use. */
static int verify_server(devcert *d, X509 *ca, X509 *srv, int *verr)
{
    int rc = 0;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!store || !ctx || !X509_STORE_add_cert(store, ca) ||
        !X509_STORE_CTX_init(ctx, store, srv, NULL) ||
        !X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER)) {
        rc = tls_fail(d, d->srv_pem, "cannot set up verification");
        goto out;
    }
    if (X509_verify_cert(ctx) == 1) {
        *verr = X509_V_OK;
    } else {
        *verr = X509_STORE_CTX_get_error(ctx);
        if (*verr == X509_V_OK) /* internal failure without a verification code */
            *verr = X509_V_ERR_UNSPECIFIED;
    }
    ERR_clear_error();
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return rc;
}

static bool expires_soon(X509 *x)
{
    time_t limit = time(NULL) + (time_t)RENEW_DAYS * 24 * 60 * 60;
    return X509_cmp_time(X509_get0_notAfter(x), &limit) <= 0; /* 0: unparsable time */
}

/* 1 if CA cert and key load and match, 0 if a new CA is needed, <0 on error. */
static int load_ca(devcert *d, X509 **ca, EVP_PKEY **ca_key)
{
    int rc = load_cert(d, d->ca_pem, ca);
    if (rc > 0)
        rc = load_key(d, d->ca_key, ca_key);
    if (rc > 0)
        rc = X509_check_private_key(*ca, *ca_key) == 1;
    ERR_clear_error();
    if (rc <= 0) {
        X509_free(*ca);
        EVP_PKEY_free(*ca_key);
        *ca = NULL;
        *ca_key = NULL;
    }
    return rc;
}

static int new_ca(devcert *d, X509 **ca, EVP_PKEY **ca_key)
{
    int rc;
    EVP_PKEY *key = gen_key();
    if (!key)
        return tls_fail(d, d->ca_key, "cannot generate P-256 key");
    X509 *cert = make_cert("Switchboard Development CA", key, NULL, key, CA_DAYS, ca_exts,
                           sizeof ca_exts / sizeof ca_exts[0]);
    if (!cert) {
        rc = tls_fail(d, d->ca_pem, "cannot create CA certificate");
        goto free_key;
    }
    /* Key first: a crash between the two leaves a mismatching pair, which is regenerated. */
    rc = write_pem(d, d->ca_key, NULL, key);
    if (rc == 0)
        rc = write_pem(d, d->ca_pem, cert, NULL);
    if (rc == 0) {
        *ca = cert;
        *ca_key = key;
        return 0;
    }
    X509_free(cert);
free_key:
    EVP_PKEY_free(key);
    return rc;
}

/* 1 if server.pem and server.key can be kept, 0 if they must be re-issued, <0 on error. */
static int server_usable(devcert *d, X509 *ca)
{
    X509 *srv = NULL;
    EVP_PKEY *key = NULL;
    int verr = X509_V_OK;
    int rc = load_cert(d, d->srv_pem, &srv);
    if (rc > 0)
        rc = load_key(d, d->srv_key, &key);
    if (rc > 0)
        rc = X509_check_private_key(srv, key) == 1 && !expires_soon(srv);
    if (rc > 0) {
        rc = verify_server(d, ca, srv, &verr);
        if (rc == 0)
            rc = verr == X509_V_OK;
    }
    ERR_clear_error();
    EVP_PKEY_free(key);
    X509_free(srv);
    return rc;
}

static int issue_server(devcert *d, X509 *ca, EVP_PKEY *ca_key)
{
    int rc;
    int verr = X509_V_OK;
    X509 *cert = NULL;
    EVP_PKEY *key = gen_key();
    if (!key)
        return tls_fail(d, d->srv_key, "cannot generate P-256 key");
    cert = make_cert("localhost", key, ca, ca_key, SERVER_DAYS, server_exts,
                     sizeof server_exts / sizeof server_exts[0]);
    if (!cert) {
        rc = tls_fail(d, d->srv_pem, "cannot issue server certificate");
        goto out;
    }
    /* A reused CA that is expired or not a CA yields certificates nobody can verify. */
    rc = verify_server(d, ca, cert, &verr);
    if (rc)
        goto out;
    if (verr != X509_V_OK) {
        set_err(d,
                "%s: CA cannot issue a valid server certificate (%s); remove %s and %s to make a "
                "new CA",
                d->ca_pem, X509_verify_cert_error_string(verr), d->ca_pem, d->ca_key);
        rc = SB_ETLS;
        goto out;
    }
    rc = write_pem(d, d->srv_key, NULL, key);
    if (rc == 0)
        rc = write_pem(d, d->srv_pem, cert, NULL);
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int sb_devcert_ensure(const char *data_dir, char *err, size_t errlen)
{
    int rc;
    X509 *ca = NULL;
    EVP_PKEY *ca_key = NULL;
    devcert d = {.dir_fd = -1, .err = err, .errlen = errlen};

    if (err && errlen)
        err[0] = '\0';
    if (!data_dir || !*data_dir) {
        set_err(&d, "devcert: empty data directory");
        return SB_EINVAL;
    }
    ERR_clear_error();

    d.tls_dir = join(data_dir, "tls");
    d.ca_pem = d.tls_dir ? join(d.tls_dir, "ca.pem") : NULL;
    d.ca_key = d.tls_dir ? join(d.tls_dir, "ca.key") : NULL;
    d.srv_pem = d.tls_dir ? join(d.tls_dir, "server.pem") : NULL;
    d.srv_key = d.tls_dir ? join(d.tls_dir, "server.key") : NULL;
    if (!d.ca_pem || !d.ca_key || !d.srv_pem || !d.srv_key) {
        set_err(&d, "%s: out of memory", data_dir);
        rc = SB_ENOMEM;
        goto free_paths;
    }

    rc = ensure_dir(&d, data_dir);
    if (rc == 0)
        rc = ensure_dir(&d, d.tls_dir);
    if (rc)
        goto free_paths;
    d.dir_fd = open(d.tls_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.dir_fd < 0) {
        rc = sys_fail(&d, d.tls_dir, "cannot open directory", errno);
        goto free_paths;
    }
    /* Two servers started at once must not both mint a CA. Best effort: some file systems
     * do not lock, and then there is nothing better to do. */
    while (flock(d.dir_fd, LOCK_EX) != 0 && errno == EINTR)
        ;

    rc = load_ca(&d, &ca, &ca_key);
    if (rc == 0) {
        rc = new_ca(&d, &ca, &ca_key);
        if (rc == 0)
            rc = issue_server(&d, ca, ca_key);
    } else if (rc > 0) {
        rc = server_usable(&d, ca);
        if (rc == 0)
            rc = issue_server(&d, ca, ca_key);
        else if (rc > 0)
            rc = 0;
    }

    EVP_PKEY_free(ca_key);
    X509_free(ca);
    close(d.dir_fd); /* releases the lock */
free_paths:
    sb_free(d.srv_key);
    sb_free(d.srv_pem);
    sb_free(d.ca_key);
    sb_free(d.ca_pem);
    sb_free(d.tls_dir);
    ERR_clear_error();
    return rc;
}
